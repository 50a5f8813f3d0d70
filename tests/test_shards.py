"""--shard K/N and `advmnist merge`: shards of a per-image run merge into what one whole run writes."""
from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from advmnist.attacks import Draws
from advmnist.cli import main
from advmnist.errors import InvalidInput
from advmnist.experiments.shards import Shard


def test_shard_parse_and_positions():
    shard = Shard.parse("1/3")
    assert (shard.index, shard.count, str(shard), shard.folder) == (1, 3, "1/3", "shard-1-of-3")
    np.testing.assert_array_equal(shard.positions(8), [1, 4, 7])
    together = np.sort(np.concatenate([Shard(k, 3).positions(8) for k in range(3)]))
    np.testing.assert_array_equal(together, np.arange(8))
    for text in ("3/3", "-1/3", "1", "a/b", "1/0", ""):
        with pytest.raises(InvalidInput, match="expected K/N"):
            Shard.parse(text)
    with pytest.raises(InvalidInput, match="would be empty"):
        Shard(0, 5).select(4, np.arange(4))


def test_a_shard_draws_the_numbers_of_the_whole_run():
    whole = Draws.of(7, 10).normal_rows((3, 4), blocks=2)
    assert whole.shape == (2, 10, 3, 4)
    # the same numbers as numpy draws in one go
    np.testing.assert_array_equal(whole, np.random.default_rng(7).standard_normal((2, 10, 3, 4)))
    for k in range(3):
        positions = Shard(k, 3).positions(10)
        part = Draws.of(7, len(positions), positions, 10)
        np.testing.assert_array_equal(part.normal_rows((3, 4), blocks=2), whole[:, positions])
        assert part.generator(0, 5).integers(1 << 30) == Draws.of(7, 10).generator(int(positions[0]), 5).integers(
            1 << 30)
    with pytest.raises(InvalidInput, match="positions"):
        Draws.of(0, 2, [0, 10], 10)


@pytest.fixture
def small_cli(commands_on_small_mnist, monkeypatch, tmp_path):
    """The commands on the 600 + 300 digits of tests/data, run in tmp_path (so assets/ is there)."""
    monkeypatch.chdir(tmp_path)

    def run(*args):
        result = CliRunner().invoke(main, [str(a) for a in args])
        assert result.exit_code == 0, result.output
        return result
    return run


def assert_same_results(whole, merged):
    """The same files; the same arrays, bit for bit; the same json values (but times and paths)."""
    assert sorted(p.name for p in whole.iterdir()) == sorted(p.name for p in merged.iterdir())
    for path in sorted(whole.glob("*.npz")):
        a, b = np.load(path), np.load(merged / path.name)
        assert sorted(a.files) == sorted(b.files), path.name
        for key in a.files:
            assert a[key].dtype == b[key].dtype and a[key].shape == b[key].shape, (path.name, key)
            assert a[key].tobytes() == b[key].tobytes(), (path.name, key, int((a[key] != b[key]).sum()), "differ")
    for path in sorted(whole.glob("*.json")):
        assert_same_json(json.loads(path.read_text()), json.loads((merged / path.name).read_text()), path.name)


def assert_same_json(a, b, where):
    if isinstance(a, dict):
        assert isinstance(b, dict) and sorted(a) == sorted(b), (where, sorted(a), b)
        for key in a:
            # times differ, and so do the folders (and the checksums of figures that show times)
            if key not in ("seconds", "member_seconds", "files", "figure", "file", "sha256"):
                assert_same_json(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), where
        for k, (x, y) in enumerate(zip(a, b)):
            assert_same_json(x, y, f"{where}[{k}]")
    else:
        assert a == b, where


COMMANDS = {
    "attack": ["attack", "--reg", "all", "--steps", "40", "--split", "test", "--offset", "3", "--count", "10",
               "--target", "random"],
    "minimal": ["minimal", "--norm", "l1", "--steps", "20", "--starts", "3", "--split", "test", "--count", "10"],
    "minimal-searched": ["minimal", "--norm", "linf", "--target", "untargeted", "--steps", "10", "--starts", "2",
                         "--search-rounds", "1", "--split", "test", "--count", "10"],
    "matrix": ["matrix", "--per-class", "1", "--steps", "30"],
    "robustness": ["robustness", "--attack", "pgd", "--eps", "0,0.05,0.15", "--steps", "6", "--starts", "2", "--count",
                   "12"],
    "robustness-auto": ["robustness", "--attack", "auto", "--eps", "0,0.1", "--steps", "2", "--count", "12"],
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.slow
def test_merged_shards_equal_one_whole_run(command, small_cli, tiny_run, tmp_path, autoattack_members):
    args = COMMANDS[command] + ["--model", tiny_run[0]]
    whole = small_cli(*args, "--out", tmp_path / "whole")
    if command.startswith("robustness"):
        assert "12 images, eps 0, 0." in whole.output
    for k in range(3):
        small_cli(*args, "--shard", f"{k}/3")  # into assets/shard-K-of-3
    records = [json.loads(p.read_text()) for p in (tmp_path / "assets" / "shard-1-of-3").glob("*.json")]
    assert [r["shard"] for r in records if "shard" in r][0] == {"index": 1, "count": 3, "population": 10 if
                                                              command.startswith(("attack", "minimal")) else
                                                              90 if command == "matrix" else 12}
    if command == "robustness-auto":  # the ensemble found examples: the merge has its bookkeeping to keep
        arrays = np.load(tmp_path / "whole" / "robustness_linf_auto.npz")
        assert (arrays["broken_by"][0] >= 0).any()
    merged = small_cli("merge", *sorted((tmp_path / "assets").glob("shard-*-of-3")), "--out", tmp_path / "merged",
                       "--json")
    assert json.loads(merged.stdout)["merged"]
    assert_same_results(tmp_path / "whole", tmp_path / "merged")


@pytest.mark.slow
def test_merge_refuses_incomplete_or_mixed_shards(small_cli, tiny_run, tmp_path):
    args = COMMANDS["minimal"] + ["--model", tiny_run[0]]
    for k in (0, 2):
        small_cli(*args, "--shard", f"{k}/3")
    out = tmp_path / "merged"
    out.mkdir()
    (out / "earlier.txt").write_text("kept")
    shards = sorted((tmp_path / "assets").glob("shard-*"))
    runner = CliRunner()
    result = runner.invoke(main, ["merge", *map(str, shards), "--out", str(out)])
    assert result.exit_code == 2 and "missing 1/3" in result.output
    small_cli(*args, "--shard", "1/3", "--seed", "5")
    result = runner.invoke(main, ["merge", *map(str, sorted((tmp_path / "assets").glob("shard-*"))), "--out",
                                  str(out)])
    assert result.exit_code == 2 and "same settings" in result.output
    result = runner.invoke(main, ["merge", str(tmp_path / "whole-nothing"), "--out", str(out)])
    assert result.exit_code == 2 and "expected a folder" in result.output
    assert [p.name for p in out.iterdir()] == ["earlier.txt"]


@pytest.mark.slow
def test_merge_refuses_other_models_misplaced_arrays_and_damaged_records(small_cli, tiny_run, tmp_path):
    args = COMMANDS["minimal"] + ["--model", tiny_run[0]]
    for k in range(3):
        small_cli(*args, "--shard", f"{k}/3")
    assets = tmp_path / "assets"
    shards = sorted(assets.glob("shard-*"))
    runner = CliRunner()

    def merge():
        out = tmp_path / "merged"
        result = runner.invoke(main, ["merge", *map(str, shards), "--out", str(out)])
        return result, out

    # a leftover temporary file of an interrupted write is not a result
    (shards[0] / ".minimal_l1.abc123.tmp.json").write_text("{")
    result, out = merge()
    assert result.exit_code == 0, result.output
    shutil.rmtree(out)
    # one shard's arrays in another's folder
    saved = (shards[1] / "minimal_l1.npz").read_bytes()
    shutil.copy(shards[0] / "minimal_l1.npz", shards[1] / "minimal_l1.npz")
    result, out = merge()
    assert result.exit_code == 2 and "is not the file" in result.output and not out.exists()
    (shards[1] / "minimal_l1.npz").write_bytes(saved)
    # an edited shard entry
    record_path = shards[2] / "minimal_l1.json"
    record = json.loads(record_path.read_text())
    record_path.write_text(json.dumps({**record, "shard": {"index": "2", "count": 3}}))
    result, out = merge()
    assert result.exit_code == 2 and "expected a shard entry" in result.output and not out.exists()
    # a shard made on another model that was at the same path: only the model's checksum tells
    assert record["settings"]["model_sha256"] == hashlib.sha256((tiny_run[0] / "model.pb").read_bytes()).hexdigest()
    record_path.write_text(json.dumps({**record, "settings": {**record["settings"], "model_sha256": "0" * 64}}))
    result, out = merge()
    assert result.exit_code == 2 and "different models" in result.output and not out.exists()


@pytest.mark.slow
def test_merge_refuses_shards_of_different_attacks(small_cli, tiny_run, tmp_path, autoattack_members):
    common = ["robustness", "--eps", "0,0.1", "--steps", "2", "--count", "4", "--model", tiny_run[0]]
    small_cli(*common, "--attack", "pgd", "--shard", "0/2")
    small_cli(*common, "--attack", "auto", "--shard", "1/2")
    shards = tmp_path / "assets"
    for suffix in (".json", ".npz", ".png"):  # the auto shard's files under the name of PGD's
        (shards / "shard-1-of-2" / f"robustness_linf_auto{suffix}").rename(shards / "shard-1-of-2" /
                                                                           f"robustness_linf{suffix}")
    result = CliRunner().invoke(main, ["merge", str(shards / "shard-0-of-2"), str(shards / "shard-1-of-2"), "--out",
                                       str(tmp_path / "merged")])
    assert result.exit_code == 2 and "expected one attack in every shard" in result.output, result.output
    assert not (tmp_path / "merged").exists()


@pytest.mark.parametrize("args, message", [
    (["--shard", "3/3"], "expected K/N"),
    (["--shard", "one/3"], "expected K/N"),
    (["--shard", "0/20", "--count", "10"], "would be empty"),
])
def test_bad_shard_is_a_usage_error(bad_input, tiny_run, args, message):
    bad_input(["minimal", "--model", str(tiny_run[0]), "--split", "test"] + args, "minimal_l2.json", message)


def test_every_command_with_shard_has_a_merge_and_no_other_does():
    """`merge` finds the experiments by what their modules define; each command that offers --shard is one."""
    from advmnist.experiments.shards import shardable

    offered = sorted(name for name, command in main.commands.items()
                     if any("--shard" in getattr(p, "opts", ()) for p in command.params))
    assert offered == sorted(module.COMMAND for module in shardable().values()) == ["attack", "matrix", "minimal",
                                                                                    "robustness"]
