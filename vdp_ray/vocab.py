"""The project's vocabularies and limits, defined once and imported everywhere (config choices, CLI ``choices=``,
HTTP checks, the library's own checks). Plain constants: importing this costs nothing (no torch, no Ray)."""

from __future__ import annotations

# --- diffusion
SCHEDULES = ("linear", "cosine", "sigmoid")
PREDICTION_TYPES = ("eps", "v", "x0")
# the names of diffusion/samplers.py's REGISTRY (which imports torch), in its order; each works on both objectives
SAMPLERS = ("ddpm", "ddim", "dpm++", "euler", "heun")
TIME_DRAWS = ("uniform", "logit_normal")  # how training draws noise levels
LOSSES = ("mse", "log_mse")  # how a frame's error enters the training loss
ANCHORS = ("none", "last", "motion")  # where a prediction starts from: nothing, copy-last, the given frames' motion
OBJECTIVES = ("ddpm", "flow")  # Gaussian diffusion on a discrete schedule; flow matching on straight paths
SPACINGS = ("trailing", "leading", "linspace")
MASK_TASKS = ("prediction", "generation", "interpolation", "random")  # what a training frame mask asks for

# --- what a trained model is asked to do (Predictor methods, `vdp predict --task`, HTTP routes)
TASKS = ("predict", "generate", "interpolate", "refine")

# --- models and training
FAMILIES = ("unet3d", "dit")  # denoisers
STAGES = ("vae", "dit", "unet3d")  # what `train.stages` may hold
PRECISIONS = ("fp16", "bf16", "fp32")
INFERENCE_PRECISIONS = ("auto", *PRECISIONS)  # auto: the export's training precision on CUDA, fp32 on CPUs

# --- data
VIDEO_EXTS = (".mp4", ".avi", ".mov", ".mkv", ".webm")
CONTAINER_NAMES = "mp4/mov, webm/mkv, avi or gif"  # the only containers opened (told from their bytes: containers.py)
IMAGE_EXTS = (".jpg", ".jpeg", ".png")
RESIZE_MODES = ("crop", "pad", "stretch")  # how `vdp shard` fits frames to a size
CLIP_FORMATS = ("npy", "mp4")  # a clip's encoding inside a shard
SYNTHETIC = ("moving-digits", "photo-pans")  # data sets `vdp shard --synthetic` makes

# --- outputs
VIDEO_OUTPUTS = (".gif", ".mp4")  # what `vdp predict --out` writes
RESPONSE_FORMATS = {"gif": "image/gif", "mp4": "video/mp4", "npz": "application/x-npz", "json": "application/json"}

# --- limits of one sampling request
GUIDANCE_MAX = 50.0  # classifier-free guidance scales (context and text) lie in [0, GUIDANCE_MAX]
PROMPT_MAX_CHARS = 2000
