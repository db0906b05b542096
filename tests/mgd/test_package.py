"""What `import mgd` brings: the library only, no application support or command-line code."""
import subprocess
import sys


def test_import_mgd_imports_no_engine_and_no_cli_code():
    code = ("import sys, mgd; bad = sorted(m for m in sys.modules if m.startswith('mgd.engine') or "
            "m in ('mgd.runner', 'cls', 'unsup', 'detectron2')); print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_engine_imports_apart_from_the_applications():
    code = ("import sys, mgd.engine; bad = sorted(m for m in sys.modules if m.split('.')[0] in "
            "('cls', 'unsup', 'seg', 'd2', 'detectron2')); print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
