"""Checks an environment the way the cluster image needs it (run at the end of cluster/Dockerfile; the tests run
it on this checkout's environment too): every runtime dependency vdp_ray declares is installed at a version
that satisfies it, and with --cuda MAJOR.MINOR, torch is built for that CUDA. Exit 1 with one line per problem.

    python cluster/check_image.py [--cuda 13.0]
"""

from __future__ import annotations

import argparse
import importlib.metadata as metadata
import re
import sys


def problems(cuda: str | None = None) -> list[str]:
    from packaging.requirements import Requirement

    found = []
    for line in metadata.requires("vdp_ray") or []:
        req = Requirement(line)
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue  # an optional extra (dev)
        try:
            version = metadata.version(req.name)
        except metadata.PackageNotFoundError:
            found.append(f"{req.name}: declared ({line}) but not installed")
            continue
        if not req.specifier.contains(version, prereleases=True):
            found.append(f"{req.name}: {version} installed, {req.specifier} declared")
        for extra in sorted(req.extras):
            missing = [r for r in _extra_requirements(req.name, extra) if not _installed(r)]
            if missing:
                found.append(f"{req.name}[{extra}]: missing {', '.join(missing)}")
    if cuda is not None:
        import torch

        if torch.version.cuda is None or not torch.version.cuda.startswith(cuda):
            found.append(f"torch {torch.__version__}: built for CUDA {torch.version.cuda}, the image is CUDA {cuda}")
    return found


def _extra_requirements(name: str, extra: str) -> list[str]:
    from packaging.requirements import Requirement

    out = []
    for line in metadata.requires(name) or []:
        req = Requirement(line)
        if req.marker is not None and req.marker.evaluate({"extra": extra}) and not req.marker.evaluate({"extra": ""}):
            out.append(req.name)
    return out


def _installed(name: str) -> bool:
    try:
        metadata.version(name)
        return True
    except metadata.PackageNotFoundError:
        return False


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cuda", help="the CUDA MAJOR.MINOR torch must be built for")
    args = parser.parse_args()
    cuda = args.cuda
    if cuda is None:  # inside the image: the base's CUDA, from the toolkit's version file
        cuda = _toolkit_cuda()
    found = problems(cuda)
    for line in found:
        print(f"image check: {line}", file=sys.stderr)
    if not found:
        print("image check: every declared dependency installed" + (f"; torch built for CUDA {cuda}" if cuda else ""))
    return 1 if found else 0


def _toolkit_cuda() -> str | None:
    import os

    version = os.environ.get("CUDA_VERSION")  # set by the nvidia/cuda base images
    match = re.match(r"(\d+\.\d+)", version or "")
    return match.group(1) if match else None


if __name__ == "__main__":
    sys.exit(main())
