"""mgd.registry: methods registered by decorator from outside mgd, or by an installed package's entry point."""
import subprocess
import sys

import pytest
import torch

import mgd
from mgd.registry import ENTRY_POINT_GROUP, distiller_options, option_default
from plugin_method import LogitMSE, write_package
from tiny_models import tiny_resnet


@pytest.fixture
def registered():
    mgd.register_distiller("logit_mse")(LogitMSE)
    yield
    mgd.unregister_distiller("logit_mse")


def test_a_method_registered_outside_mgd_is_built_with_its_options_and_trains(registered):
    assert "logit_mse" in mgd.DISTILLERS and "logit_mse" in sorted(mgd.DISTILLERS)
    assert distiller_options("logit_mse") >= {"weight", "teacher_layers", "own_networks"}
    assert option_default("logit_mse", "weight") == 1.0
    torch.manual_seed(0)
    teacher, student = tiny_resnet(True), tiny_resnet(False)
    d = mgd.build_distiller("logit_mse", teacher, student, weight=3.0)
    x = torch.randn(2, 3, 32, 32)
    d.train()
    logits, terms = d.forward_train(x)
    with torch.no_grad():
        expected = 3.0 * torch.nn.functional.mse_loss(student(x), teacher.eval()(x))
    torch.testing.assert_close(terms["logit_mse"], expected)
    with pytest.raises(TypeError, match="takes no option.*'beta'"):
        mgd.build_distiller("logit_mse", teacher, student, beta=1)


def test_names_are_unique_and_registrations_must_be_distillers(registered):
    class Other(LogitMSE):
        pass
    with pytest.raises(ValueError, match="'logit_mse' is already registered .*LogitMSE"):
        mgd.register_distiller("logit_mse")(Other)
    with pytest.raises(ValueError, match="already registered"):
        mgd.register_distiller("mgd")(Other)
    with pytest.raises(TypeError, match="subclass of mgd.Distiller"):
        mgd.register_distiller("not_a_method")(torch.nn.Linear)
    mgd.register_distiller("logit_mse")(LogitMSE)  # the same class again: nothing changes
    assert mgd.DISTILLERS["logit_mse"] is LogitMSE


def _in_fresh_python(code, path):
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(path), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip(), proc.stderr


def test_an_installed_packages_entry_point_adds_a_method_on_the_first_look_up(tmp_path):
    """Not at ``import mgd`` (the plugin module is not imported then), then on the first look-up of the registry."""
    write_package(tmp_path)
    assert ENTRY_POINT_GROUP == "mgd.distillers"
    out, _ = _in_fresh_python(
        "import sys, mgd; before = 'mgd_test_plugin' in sys.modules; names = sorted(mgd.DISTILLERS); "
        "print(before, 'logit_mse' in names, mgd.DISTILLERS['logit_mse'].__module__)", tmp_path)
    assert out == "False True mgd_test_plugin"


def test_a_plugin_that_fails_to_import_is_a_warning_and_a_taken_name_an_error(tmp_path):
    write_package(tmp_path / "broken", name="broken_method")
    (tmp_path / "broken" / "mgd_test_plugin.py").write_text("raise ImportError('no such thing')\n")
    out, err = _in_fresh_python("import mgd; print('broken_method' in mgd.DISTILLERS, 'mgd' in mgd.DISTILLERS)",
                                tmp_path / "broken")
    assert out == "False True" and "'broken_method'" in err and "could not be loaded" in err
    write_package(tmp_path / "clash", name="kd")
    proc = subprocess.run([sys.executable, "-c", "import mgd; list(mgd.DISTILLERS)"], capture_output=True, text=True,
                          timeout=120, env={"PYTHONPATH": str(tmp_path / "clash"), "PATH": "/usr/bin:/bin"})
    assert proc.returncode != 0 and "names a method that is already registered" in proc.stderr


def test_a_plugin_imported_before_the_look_up_and_a_plugin_that_is_no_distiller(tmp_path):
    """The class an entry point names may have registered itself already (its module imported first): that is no
    clash. An entry point naming something that is no Distiller is a warning, and the other plugins still load."""
    write_package(tmp_path)
    info = tmp_path / "mgd_test_plugin-0.0.dist-info" / "entry_points.txt"
    info.write_text("[mgd.distillers]\nnot_a_method = torch.nn:Linear\nlogit_mse = mgd_test_plugin:LogitMSE\n")
    code = ("import mgd, mgd_test_plugin; mgd.register_distiller('logit_mse')(mgd_test_plugin.LogitMSE); "
            "print(sorted(n for n in mgd.DISTILLERS if n in ('logit_mse', 'not_a_method')))")
    out, err = _in_fresh_python(code, tmp_path)
    assert out == "['logit_mse']" and "'not_a_method'" in err and "subclass of mgd.Distiller" in err
