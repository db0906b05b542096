"""mgd.tools.plot: the matching pictures of a run folder, written headless from a small real run."""
import json
import struct

import pytest
import torch

import mgd
from mgd.tools import plot
from mgd.engine import RunLog, prepare_if_due

from tiny_models import randomize_bn, tiny_resnet


def _png_size(path):
    """(width, height) from the PNG header (IHDR is the first chunk)."""
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR"
    return struct.unpack(">II", head[16:24])


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """Two matching updates of the tiny ResNet pair through the engine's prepare step, TensorBoard on."""
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("run")
    d = mgd.build_distiller("mgd", randomize_bn(tiny_resnet(True)), tiny_resnet(False), update_freq=1)
    log = RunLog(str(out), rank=0, tensorboard=True)
    batches = {epoch: [torch.randn(4, 3, 32, 32)] for epoch in range(2)}  # other images: the matching moves
    for epoch in range(2):
        prepare_if_due(d, epoch, batches.__getitem__, log)
    log.close()
    return out, d, batches[1][0]


def test_plot_writes_pngs_of_the_expected_size_from_a_small_runs_log(run_dir, capsys):
    out, d, _ = run_dir
    assert plot.main([str(out)]) == 0
    names = ["matching_cost", "matching_stability"] + [f"matching_matrix_stage{i}" for i in range(4)]
    assert capsys.readouterr().out.split() == [str(out / f"{n}.png") for n in names]
    dpi = plot.DPI
    expected = {"matching_cost": (4 * plot.PANEL_SIZE[0] * dpi, plot.PANEL_SIZE[1] * dpi),  # 4 stages, one row
                "matching_stability": (plot.STABILITY_SIZE[0] * dpi, plot.STABILITY_SIZE[1] * dpi),
                **{f"matching_matrix_stage{i}": (plot.MATRIX_SIZE[0] * dpi, plot.MATRIX_SIZE[1] * dpi)
                   for i in range(4)}}
    for name, size in expected.items():
        path = out / f"{name}.png"
        assert path.stat().st_size > 5000  # drawn, not blank
        assert _png_size(path) == tuple(round(v) for v in size)


def test_the_last_matching_is_saved_loadable_with_weights_only(run_dir):
    """The saved matrices are the costs of the last update's images, recomputed here with the original's formula
    (per image, 2 - 2 <S_s, T_t> of L2-normalised channels, then the mean), and the summary's numbers are theirs."""
    out, d, last_batch = run_dir
    state = torch.load(out / plot.MATCHING_FILE, weights_only=True)
    assert int(state["num_updates"]) == 2
    d.eval()
    t_feats, _, s_feats, _ = d.run_networks(last_batch)
    summary = d.prepare_summary()
    for i in range(4):
        cost, inds = state[f"stage{i}_cost"], state[f"stage{i}_guided_inds"]
        assert cost.dtype == torch.float32 and cost.shape == (d.s_channels[i], d.t_channels[i])
        assert torch.equal(inds, d.guided_inds[i])
        s = torch.nn.functional.normalize(s_feats[i].detach().flatten(2), dim=2)
        t = torch.nn.functional.normalize(t_feats[i].detach().flatten(2), dim=2)
        expected = (2 - 2 * torch.bmm(s, t.transpose(1, 2))).mean(0)
        torch.testing.assert_close(cost, expected, rtol=0, atol=1e-5)
        sc = cost.shape[0]
        matched = [expected[r % sc, c].item() for r, c in enumerate(inds.tolist())]
        assert summary[f"stage{i}_matched_cost"] == pytest.approx(sum(matched) / len(matched), abs=1e-5)
        assert summary[f"stage{i}_random_cost"] == pytest.approx(expected.double().sum().item() / expected.numel(),
                                                                 abs=1e-5)


def test_matching_events_reach_tensorboard_as_scalars_and_figures(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    out, _, _ = run_dir
    events = EventAccumulator(str(out / "tb"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    scalars, images = events.Tags()["scalars"], events.Tags()["images"]
    assert {"matching/stage3_matched_cost", "matching/stage3_random_cost", "matching/stage3_changed",
            "matching/track_seconds"} <= set(scalars)
    assert "matching/ranks" not in scalars
    assert [e.step for e in events.Scalars("matching/stage3_matched_cost")] == [0, 1]
    assert [e.step for e in events.Scalars("matching/stage3_changed")] == [1]  # none at the first update
    assert {f"matching/matrix_stage{i}" for i in range(4)} <= set(images)


def test_plot_out_folder_and_curves_without_the_matrices(run_dir, tmp_path):
    out, _, _ = run_dir
    only_log = tmp_path / "only_log"
    only_log.mkdir()
    (only_log / "log.jsonl").write_text((out / "log.jsonl").read_text() + '{"event": "matching", "before')  # torn
    target = tmp_path / "pictures"
    assert plot.main([str(only_log), "--out", str(target)]) == 0
    assert sorted(p.name for p in target.iterdir()) == ["matching_cost.png", "matching_stability.png"]
    records = plot.read_matching_records(str(only_log))
    assert [r["before_epoch"] for r in records] == [0, 1]


def test_plot_without_matching_data_is_one_line_and_exit_code_2(tmp_path, capsys):
    (tmp_path / "log.jsonl").write_text(json.dumps({"epoch": 0, "top1": 50.0}) + "\n")
    assert plot.main([str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no matching to plot" in err
    assert plot.main([str(tmp_path / "missing")]) == 2
    assert "is not a folder" in capsys.readouterr().err


def test_a_matching_file_that_is_not_one_is_named_in_one_line(tmp_path, capsys):
    """A text file, or another checkpoint copied to matching_last.pth, is said to be what it is (not a
    KeyError, not "no matching_last.pth")."""
    (tmp_path / "matching_last.pth").write_text("not a checkpoint\n")
    assert plot.main([str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"mgd.plot: error: cannot read checkpoint {tmp_path}")
    torch.save({"epoch": 3, "student": {"w": torch.zeros(1)}}, tmp_path / "matching_last.pth")
    assert plot.main([str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"mgd.plot: error: {tmp_path / 'matching_last.pth'} holds no cost matrix (stage<i>_cost): it is not the "
        "matching file an MGD run writes (its keys: epoch, student)")
