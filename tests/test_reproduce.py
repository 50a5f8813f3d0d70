"""``advmnist reproduce`` and ``advmnist report``: steps, reuse, the report, and the page in a real browser."""
from __future__ import annotations

import json
import shutil
import subprocess

import pytest
from click.testing import CliRunner

from advmnist.cli import main

QUICK = """
[attack]
steps = 5
count = 2
[universal]
steps = 3
[immunize.universal]
rounds = 1
train-steps = 2
noise-steps = 2
refresh-every = 0
[matrix]
steps = 3
per-class = 1
[tradeoff]
steps = 3
count = 2
weights = "0,0.1"
"""


@pytest.fixture(scope="module")
def reproduced(tiny_run, small_mnist_loaders, tmp_path_factory):
    """A quick reproduction on the tiny model: every step but training, tiny settings; the steps that read both
    MNIST splits (universal, immunize) get the 900 committed digits, as ``commands_on_small_mnist`` gives them."""
    import advmnist.data.mnist

    out = tmp_path_factory.mktemp("reproduce") / "report"
    config = out.parent / "quick.toml"
    config.write_text(QUICK)
    args = ["reproduce", "--model", str(tiny_run[0]), "--out", str(out), "--config", str(config), "--json"]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(advmnist.data.mnist, "load_train_test", small_mnist_loaders["load_train_test"])
        first = CliRunner().invoke(main, args)
    return out, config, args, first


@pytest.mark.slow
def test_reproduce_writes_the_report_with_every_reference_number(reproduced):
    out, _, _, first = reproduced
    assert first.exit_code == 0, first.output
    report = json.loads((out / "report.json").read_text())
    quantities = {row["quantity"]: row for row in report["rows"]}
    for reg in ("l2", "l1", "none"):
        for key in ("L1Norm", "L2Norm", "cross_entropy_loss", "regularize_cost"):
            row = quantities[f"{reg}: {key}"]
            if (reg, key) == ("none", "regularize_cost"):
                continue  # not comparable: checked below
            assert row["reference"] is not None and row["difference"] == pytest.approx(row["ours"] - row["reference"])
    assert quantities["universal noise: test accuracy under the target-3 noise"]["reference"] == 0.138
    # the reference measured immunity under the noise of its last training phase: so do the rows beside it
    for recipe in ("the reference's", "advmnist's"):
        row = quantities[f"target 3, {recipe} recipe: accuracy under the noise it trained on"]
        assert row["reference"] == 0.933 and 0 <= row["ours"] <= 1
        assert quantities[f"target 3, {recipe} recipe: accuracy under a freshly optimized noise"]["reference"] is None
    assert quantities["every target in turn, the reference's recipe: clean test accuracy"]["reference"] == 0.876
    assert quantities["none: regularize_cost"]["reference"] is None  # the reference's 1.845 is not comparable
    assert [s["name"] for s in report["steps"]] == ["attack", "universal", "immunize", "immunize-reference",
                                                   "immunize-all", "matrix", "tradeoff"]
    reference_recipe = report["settings"]["immunize-reference"]["settings"]
    assert reference_recipe["refresh_every"] == 0 and reference_recipe["replay"] is False
    assert report["settings"]["attack"]["settings"]["steps"] == 5  # the config reached the step
    page = (out / "index.html").read_text()
    assert page.count("<img ") == len(report["figures"]) >= 5 and "data:image/png;base64," in page
    assert "http" not in page.split("<h2>References</h2>")[0]  # nothing to fetch: figures are inlined
    assert "| l2: L1Norm |" in (out / "report.md").read_text()
    # the quick config's settings are marked beside the reference's, and every measure is defined
    differences = {(d["step"], d["setting"]): (d["ours"], d["reference"]) for d in report["differences"]}
    assert differences[("attack", "steps")] == (5, 6000) and differences[("attack", "count")] == (2, 16)
    assert differences[("universal", "steps")] == (3, 1000) and ("universal", "noise-limit") not in differences
    assert differences[("immunize-reference", "rounds")] == (1, 2)
    markdown = (out / "report.md").read_text()
    assert "| attack | steps | 5 | 6000 |" in markdown and "**L2Norm**: the L2 norm" in markdown
    assert "<td>steps</td><td>5</td><td>6000</td>" in page and "<strong>L1Norm</strong>" in page


@pytest.mark.slow
def test_a_second_run_reuses_finished_steps_and_redoes_changed_ones(reproduced):
    out, config, args, first = reproduced
    assert first.exit_code == 0, first.output
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 0, again.output
    assert again.stderr.count("reusing") == 7
    (out / "matrix" / "matrix_l2.json").write_text("{}")  # a result damaged on disk: that step runs again
    third = CliRunner().invoke(main, args)
    assert third.exit_code == 0 and third.stderr.count("reusing") == 6 and "matrix: done" in third.stderr
    assert json.loads((out / "matrix" / "matrix_l2.json").read_text())["settings"]["steps"] == 3
    config.write_text(QUICK.replace("[tradeoff]\nsteps = 3", "[tradeoff]\nsteps = 4"))  # other settings: run again
    fourth = CliRunner().invoke(main, args)
    assert fourth.exit_code == 0 and "tradeoff: done" in fourth.stderr and fourth.stderr.count("reusing") == 6
    assert [p.name for p in (out / "tradeoff").glob("*.json")] == ["tradeoff_l2_l1.json"]  # no stale result
    config.write_text(QUICK)


@pytest.mark.slow
def test_report_rebuilds_the_page_from_disk(reproduced):
    out, _, _, first = reproduced
    assert first.exit_code == 0, first.output
    (out / "index.html").unlink()
    result = CliRunner().invoke(main, ["report", str(out)])
    assert result.exit_code == 0, result.output
    assert (out / "index.html").is_file()
    assert not json.loads((out / "report.json").read_text())["warnings"]
    # a figure of another run beside a step's record (as an interrupted write would leave): the report says so
    figure = out / "attack" / "mnist_adv_sample_l2.png"
    kept = figure.read_bytes()
    figure.write_bytes(kept + b"another run")
    try:
        mixed = CliRunner().invoke(main, ["report", str(out)])
        assert mixed.exit_code == 0, mixed.output
        warnings = json.loads((out / "report.json").read_text())["warnings"]
        assert any(str(figure) in w and "run the attack step again" in w for w in warnings), warnings
    finally:
        figure.write_bytes(kept)


@pytest.mark.slow
def test_ctrl_c_keeps_the_finished_steps_for_the_next_run(tiny_run, tmp_path, monkeypatch):
    import advmnist.cli.reproduce as command

    config = tmp_path / "quick.toml"
    config.write_text(QUICK)
    real, calls = command._run_in_process, []

    def second_step_interrupted(args):
        calls.append(args[0])
        if len(calls) == 2:
            raise KeyboardInterrupt
        real(args)

    monkeypatch.setattr(command, "_run_in_process", second_step_interrupted)
    args = ["reproduce", "--model", str(tiny_run[0]), "--out", str(tmp_path / "out"), "--config", str(config),
            "--only", "attack,matrix"]
    stopped = CliRunner().invoke(main, args)
    assert stopped.exit_code == 130 and "finished steps are kept" in stopped.output
    steps = tmp_path / "out" / "steps"
    assert "seconds" in json.loads((steps / "attack.json").read_text())  # finished
    assert json.loads((steps / "matrix.json").read_text())["status"] == "running"  # interrupted: not reused
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 0, again.output
    assert "attack: reusing" in again.output and "matrix: done" in again.output and calls[-1] == "matrix"


def test_reproduce_never_deletes_a_folder_it_did_not_write(tmp_path):
    mine = tmp_path / "attack"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    result = CliRunner().invoke(main, ["reproduce", "--model", str(tmp_path), "--out", str(tmp_path),
                                       "--only", "attack"])
    assert result.exit_code == 2 and "did not write" in result.output
    assert (mine / "notes.txt").read_text() == "mine"


def test_mixed_files_finds_a_file_that_is_not_the_records(tmp_path):
    from advmnist import fileio
    from advmnist.experiments import results

    figure, arrays = tmp_path / "x.png", tmp_path / "x.npz"
    figure.write_bytes(b"figure")
    arrays.write_bytes(b"arrays")
    record = {"files": {"figure": str(figure), "arrays": "elsewhere/x.npz"},
              "sha256": {"figure": fileio.sha256_file(figure), "arrays": fileio.sha256_file(arrays)}}
    assert results.mixed_files(record, tmp_path / "x.json") == []
    arrays.write_bytes(b"another run's arrays")  # found beside the record though recorded elsewhere
    assert results.mixed_files(record, tmp_path / "x.json") == [str(arrays)]


def test_report_of_a_folder_without_steps_is_an_error(tmp_path):
    result = CliRunner().invoke(main, ["report", str(tmp_path)])
    assert result.exit_code == 2 and "no finished step" in result.output


def test_unknown_step_is_an_error(tmp_path):
    result = CliRunner().invoke(main, ["reproduce", "--only", "attack,fly", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "unknown step(s) ['fly']" in result.output
    # the old spelling still works for one release, with a note
    result = CliRunner().invoke(main, ["reproduce", "--steps", "attack,fly", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "unknown step(s) ['fly']" in result.output
    assert "`reproduce --steps` is now `--only`" in result.output


@pytest.mark.parametrize("text, expected", [
    ('[reproduce]\nsteps = "attack"\n', "expected [reproduce] steps = a list"),
    ("[reproduce\n", "expected a readable TOML file"),
])
def test_a_bad_reproduce_config_is_an_error(tmp_path, text, expected):
    config = tmp_path / "bad.toml"
    config.write_text(text)
    result = CliRunner().invoke(main, ["reproduce", "--config", str(config), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and expected in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("old, new, expected", [
    ("weights =", "wieghts =", "step tradeoff (`advmnist tradeoff`): "),   # a typo in the last step's table
    ("[attack]", "[atack]", "table(s) [atack] match no step"),
    ("per-class = 1", "per-class = 0", "step matrix (`advmnist matrix`): "),
    ("train-steps = 2", "train-stepz = 2", "step immunize (`advmnist immunize`): "),  # a subcommand's table
])
def test_every_steps_config_is_checked_before_the_first_step_runs(tiny_run, tmp_path, old, new, expected):
    config = tmp_path / "late-typo.toml"
    assert old in QUICK
    config.write_text(QUICK.replace(old, new))
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["reproduce", "--model", str(tiny_run[0]), "--out", str(out), "--config",
                                       str(config)])
    assert result.exit_code == 2 and expected in result.output, result.output
    assert not (out / "steps").exists()  # no step ran, none was even marked running


def test_a_step_list_with_nothing_to_run_is_an_error(tiny_run, tmp_path):
    result = CliRunner().invoke(main, ["reproduce", "--model", str(tiny_run[0]), "--only", "train", "--out",
                                       str(tmp_path / "out")])
    assert result.exit_code == 2 and "nothing to run" in result.output
    assert not (tmp_path / "out").exists()


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    pytest.skip("no Chromium on this machine (Debian: apt-get install chromium); the page was not rendered")


CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.mark.slow
def test_the_page_renders_in_a_real_browser_with_every_image(reproduced, tmp_path):
    from matplotlib.image import imread

    out, _, _, first = reproduced
    assert first.exit_code == 0, first.output
    browser = _chromium()
    # a copy of the page that reports, in its title, how many images the browser decoded
    probe = out / "probe.html"
    check = ("<script>window.onload=()=>{const i=[...document.images];"
             "document.title='loaded '+i.filter(x=>x.complete&&x.naturalWidth>0).length+' of '+i.length;}</script>")
    probe.write_text((out / "index.html").read_text().replace("</body>", check + "</body>"))
    dom = subprocess.run([browser, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}",
                          "--virtual-time-budget=5000", "--dump-dom", probe.as_uri()],
                         capture_output=True, text=True, timeout=120)
    count = (out / "index.html").read_text().count("<img ")
    assert f"<title>loaded {count} of {count}</title>" in dom.stdout, dom.stderr[-2000:]
    shot = tmp_path / "shot.png"
    subprocess.run([browser, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile2'}", f"--screenshot={shot}",
                    "--window-size=1280,2000", (out / "index.html").as_uri()], capture_output=True, timeout=120)
    pixels = imread(shot)[..., :3]
    assert pixels.std() > 0.05 and (pixels < 0.5).mean() > 0.005  # not blank: text, tables and figures
    probe.unlink()


@pytest.mark.slow
def test_without_a_model_the_first_step_trains_one(tmp_path, commands_on_small_mnist):
    config = tmp_path / "train.toml"
    config.write_text("[train]\nepochs = 1\nbatch-size = 256\n")
    out = tmp_path / "report"
    args = ["reproduce", "--out", str(out), "--config", str(config), "--only", "train"]
    first = CliRunner().invoke(main, args)
    assert first.exit_code == 0, first.output
    meta = json.loads((out / "run" / "model.json").read_text())
    assert meta["epochs"] == 1 and meta["batch_size"] == 256
    report = json.loads((out / "report.json").read_text())
    assert report["rows"][0]["quantity"] == "test accuracy of the trained CNN"
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 0 and "train: reusing" in again.output
