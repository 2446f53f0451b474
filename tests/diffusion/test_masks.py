import pytest
import torch

from vdp_ray.diffusion import TASKS, interpolation_mask, latent_frame_mask, prediction_mask, sample_frame_masks

PROBS = {"prediction": 0.5, "generation": 0.2, "interpolation": 0.2, "random": 0.1}


def draw(n=40000, frames=8, probs=PROBS, context=(2, 5), drop=0.0, seed=0):
    return sample_frame_masks(n, frames, probs, context, drop, torch.Generator().manual_seed(seed))


def test_tasks_come_at_the_configured_frequencies():
    masks = draw()
    for i, name in enumerate(TASKS):
        assert (masks.task == i).float().mean().item() == pytest.approx(PROBS[name], abs=0.01)


def test_each_task_builds_its_mask():
    masks = draw()
    m = masks.mask
    drawn = {name: masks.task == i for i, name in enumerate(TASKS)}  # masks.task indexes TASKS
    pred = m[drawn["prediction"]]
    k = pred.sum(1)
    assert k.min() == 2 and k.max() == 5
    assert torch.equal(pred, torch.arange(8)[None] < k[:, None]), "prediction gives a prefix"
    for value in range(2, 6):  # k uniform over the range
        assert (k == value).float().mean().item() == pytest.approx(0.25, abs=0.02)
    assert not m[drawn["generation"]].any(), "generation gives nothing"
    assert torch.equal(m[drawn["interpolation"]], interpolation_mask(int(drawn["interpolation"].sum()), 8))
    rand = m[drawn["random"]]
    assert not rand.all(1).any(), "random never gives every frame"
    assert rand.float().mean().item() == pytest.approx(0.5, abs=0.03)


def test_context_drop_becomes_the_null_condition():
    masks = draw(probs={"prediction": 1.0}, drop=0.25)
    assert masks.dropped.float().mean().item() == pytest.approx(0.25, abs=0.01)
    assert not masks.mask[masks.dropped].any()
    assert masks.mask[~masks.dropped].any(1).all()


def test_same_seed_same_masks():
    a, b = draw(n=100, seed=3), draw(n=100, seed=3)
    assert torch.equal(a.mask, b.mask) and torch.equal(a.task, b.task)
    assert not torch.equal(a.mask, draw(n=100, seed=4).mask)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(probs={"forecast": 1.0}), "unknown mask task"),
        (dict(probs={"prediction": 0.0}), "not all zero"),
        (dict(context=(0, 3)), "context range"),
        (dict(context=(2, 8)), "context range"),
    ],
)
def test_bad_mask_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        draw(n=4, **kwargs)


def test_fixed_masks_for_sampling():
    assert prediction_mask(2, 5, 3).tolist() == [[True, True, True, False, False]] * 2
    assert interpolation_mask(1, 4).tolist() == [[True, False, False, True]]
    with pytest.raises(ValueError, match="context frames must be in"):
        prediction_mask(1, 4, 4)


def test_latent_frame_mask_needs_whole_latent_frames():
    m = prediction_mask(2, 8, 4)
    assert latent_frame_mask(m, 2).tolist() == [[True, True, False, False]] * 2
    assert latent_frame_mask(m, 4).tolist() == [[True, False]] * 2
    with pytest.raises(ValueError, match="3 given frames do not fill whole latent frames"):
        latent_frame_mask(prediction_mask(1, 8, 3), 2)
    with pytest.raises(ValueError, match="do not divide"):
        latent_frame_mask(prediction_mask(1, 6, 2), 4)


def test_nearest_given_frame_is_the_anchor():
    from vdp_ray.diffusion import nearest_given

    frames = torch.arange(5.0).view(1, 1, 5, 1, 1).expand(3, 2, 5, 2, 2).clone()
    frames = torch.arange(6.0).view(1, 1, 6, 1, 1).expand(3, 2, 6, 2, 2).clone()
    mask = torch.tensor([[False, True, False, False, False, True], [True] + [False] * 5, [False] * 6])
    got = nearest_given(frames, mask)[:, 0, :, 0, 0]
    # the closest given frame, the earlier one on a tie; a clip with nothing given has no anchor (zeros)
    assert got.tolist() == [[1, 1, 1, 1, 5, 5], [0] * 6, [0] * 6]
    assert got.shape == (3, 6)
