"""Put NIQE's parameter file where pyiqa looks for it, from PyPI, for machines that reach PyPI but not GitHub.

pyiqa downloads ``niqe_modelparameters.mat`` (the pristine-image model: ``mu_prisparam`` 1x36 and
``cov_prisparam`` 36x36) from GitHub on first use. The same model ships in BasicSR's source
distribution on PyPI (``basicsr/metrics/niqe_pris_params.npz``, keys ``mu_pris_param`` /
``cov_pris_param``). This script downloads that sdist (sha256-pinned), reads the two arrays and
writes them under pyiqa's names to ``$TORCH_HOME/hub/pyiqa/niqe_modelparameters.mat``, where
pyiqa's loader finds it and downloads nothing. A file already there is left alone.

    python scripts/fetch_niqe_params.py            # prints the path; exit 1 with the reason on failure
"""

from __future__ import annotations

import hashlib
import io
import sys
import tarfile
import urllib.request
from pathlib import Path

SDIST = ("https://files.pythonhosted.org/packages/86/41/00a6b000f222f0fa4c6d9e1d6dcc9811a374cabb8abb9d408b77de39648c/"
         "basicsr-1.4.2.tar.gz")
SHA256 = "b89b595a87ef964cda9913b4d99380ddb6554c965577c0c10cb7b78e31301e87"
MEMBER = "basicsr-1.4.2/basicsr/metrics/niqe_pris_params.npz"


def target() -> Path:
    import torch.hub

    return Path(torch.hub.get_dir()) / "pyiqa" / "niqe_modelparameters.mat"


def fetch(dest: Path) -> Path:
    import numpy as np
    import scipy.io

    with urllib.request.urlopen(SDIST, timeout=120) as r:  # a fixed https URL
        data = r.read()
    digest = hashlib.sha256(data).hexdigest()
    if digest != SHA256:
        raise RuntimeError(f"basicsr-1.4.2.tar.gz: sha256 {digest}, expected {SHA256}")
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        member = tar.extractfile(MEMBER)
        if member is None:
            raise RuntimeError(f"{MEMBER} not found in the sdist")
        params = np.load(io.BytesIO(member.read()))
    mu, cov = params["mu_pris_param"], params["cov_pris_param"]
    if mu.size != 36 or cov.shape != (36, 36):
        raise RuntimeError(f"unexpected NIQE parameter shapes {mu.shape}, {cov.shape}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(".partial")
    scipy.io.savemat(tmp, {"mu_prisparam": mu.reshape(1, 36), "cov_prisparam": cov})
    tmp.replace(dest)
    return dest


def main() -> int:
    dest = target()
    if dest.is_file():
        print(dest)
        return 0
    try:
        print(fetch(dest))
    except Exception as e:  # noqa: BLE001 - report any failure in one line; the caller decides
        print(f"fetch_niqe_params: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
