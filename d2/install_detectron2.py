"""Install real detectron2 0.6 into the current Python environment from the package registries, without
GitHub and without compiling anything.

    python d2/install_detectron2.py            # idempotent: does nothing if detectron2 already imports

detectron2 is not on PyPI; ``pb1-detectron2==0.6`` is a source distribution whose Python files are
detectron2 v0.6's, but it lacks the C++/CUDA sources, so a plain ``pip install`` fails. This script:

1. downloads that source distribution with pip and unpacks it in a temporary folder;
2. builds no extension modules (``ext_modules=[]`` in its setup.py);
3. moves ``detectron2/model_zoo/configs`` to ``configs`` at the root, where setup.py looks for the
   model-zoo YAML files (otherwise they are not installed);
4. adds ``detectron2/_C.py`` (d2/detectron2_C.py): version helpers that answer, operators that raise a
   clear NotImplementedError (rotated boxes, deformable convolution, the fast COCO evaluation);
5. replaces the one ``Image.LINEAR`` (removed in Pillow 10, evaluated at import) with ``Image.BILINEAR``,
   the same filter;
6. pip-installs the patched tree with ``setuptools<81`` (model_zoo imports pkg_resources).

A normal detectron2 installation (compiled, from source) works just as well with mgd's d2 project.
"""
from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile

VERSION = "0.6"
HERE = os.path.dirname(os.path.abspath(__file__))


def already_installed() -> bool:
    probe = "import detectron2, detectron2.modeling, detectron2.model_zoo; print(detectron2.__version__)"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    return result.returncode == 0 and result.stdout.strip().startswith(VERSION)


def pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", *args], check=True)


def patch(tree: str) -> None:
    setup_py = os.path.join(tree, "setup.py")
    with open(setup_py) as f:
        text = f.read()
    if "ext_modules=get_extensions()" not in text:
        raise RuntimeError("unexpected setup.py in the detectron2 source distribution: ext_modules line not found")
    with open(setup_py, "w") as f:
        f.write(text.replace("ext_modules=get_extensions()", "ext_modules=[]"))
    zoo_configs = os.path.join(tree, "detectron2", "model_zoo", "configs")
    root_configs = os.path.join(tree, "configs")
    if os.path.isdir(zoo_configs) and not os.path.exists(root_configs):
        shutil.move(zoo_configs, root_configs)
    shutil.copyfile(os.path.join(HERE, "detectron2_C.py"), os.path.join(tree, "detectron2", "_C.py"))
    transform_py = os.path.join(tree, "detectron2", "data", "transforms", "transform.py")
    with open(transform_py) as f:
        text = f.read()
    with open(transform_py, "w") as f:
        f.write(text.replace("interp=Image.LINEAR", "interp=Image.BILINEAR"))


def main() -> int:
    if already_installed():
        print(f"detectron2 {VERSION} already installed")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        print(f"downloading the detectron2 {VERSION} source distribution (pb1-detectron2) ...", flush=True)
        pip("download", "-q", "--no-deps", "--no-binary", ":all:", "--no-build-isolation", "-d", tmp,
            f"pb1-detectron2=={VERSION}")
        archive = glob.glob(os.path.join(tmp, "pb1-detectron2-*.tar.gz"))
        if not archive:
            raise RuntimeError("pip did not download the pb1-detectron2 source distribution")
        with tarfile.open(archive[0]) as tar:
            tar.extractall(tmp, filter="data")
        tree = os.path.join(tmp, f"pb1-detectron2-{VERSION}")
        patch(tree)
        print("installing detectron2 (pure Python, nothing compiled) ...", flush=True)
        pip("install", "-q", "setuptools<81")
        pip("install", "-q", "--no-build-isolation", tree)
    if not already_installed():
        raise RuntimeError("detectron2 was installed but does not import")
    print(f"detectron2 {VERSION} installed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
