"""`modelzip sensitivity`: per-layer accuracy curves, end to end through the CLI."""

from __future__ import annotations

import json

from modelzip.cli import main


def test_sensitivity_cli_json_on_digits(capsys):
    code = main(
        ["sensitivity", "zoo:lenet300", "--data", "digits", "--json", "--sparsities", "0.3,0.99"]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    result = json.loads(captured.out)  # exactly one JSON object on stdout
    assert result["split"] == "val" and result["sparsities"] == [0.3, 0.99]
    assert list(result["layers"]) == ["fc1", "fc2", "fc3"]
    for row in result["layers"].values():
        low, high = row["accuracy"]
        assert low >= result["baseline"] - 0.05  # 30% of one layer barely matters...
        assert high < low  # ...99% of it does
        assert row["drop"] == [round(result["baseline"] - a, 6) for a in row["accuracy"]]
    assert result["layers"]["fc1"]["params"] == 64 * 300


def test_sensitivity_cli_table(capsys):
    code = main(
        [
            "sensitivity",
            "zoo:lenet300",
            "--data",
            "digits",
            "--sparsities",
            "0.9",
            "--layers",
            "fc3",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "fc3" in out and "fc1" not in out and "baseline accuracy" in out


def test_sensitivity_cli_bad_inputs_exit_2(capsys):
    assert main(["sensitivity", "zoo:lenet300", "--data", "digits", "--sparsities", "0.5,1"]) == 2
    assert "each value must be in [0, 1), got 1.0" in capsys.readouterr().err
    assert main(["sensitivity", "zoo:lenet300", "--data", "digits", "--sparsities", "a"]) == 2
    assert "--sparsities must be comma-separated numbers" in capsys.readouterr().err
    assert main(["sensitivity", "zoo:lenet300", "--data", "digits", "--layers", "fc9"]) == 2
    err = capsys.readouterr().err
    assert "'fc9' matches no layer; layers: fc1, fc2, fc3" in err and err.count("\n") == 1
    assert main(["sensitivity", "zoo:lenet300", "--data", "digits", "--criterion", "l3"]) == 2
    assert "'magnitude', 'taylor', 'random' or 'bn_scale'" in capsys.readouterr().err


def test_sensitivity_cli_channel_pattern_skips_output_layer(capsys):
    code = main(
        [
            "sensitivity",
            "zoo:lenet300",
            "--data",
            "digits",
            "--json",
            "--pattern",
            "channel",
            "--sparsities",
            "0.5",
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    result = json.loads(captured.out)
    assert list(result["layers"]) == ["fc1", "fc2"]
    assert "fc3" in result["skipped"] and "model's output" in result["skipped"]["fc3"]
    assert result["layers"]["fc1"]["accuracy"][0] > 0.5


def test_compress_cli_rejects_bad_prune_recipes_in_one_line(tmp_path, capsys):
    cases = {
        "stages: [{method: prune, pattern: '4:2'}]": "1 <= N <= M",
        "stages: [{method: prune, sparsity: 1.2}]": "sparsity must be in [0, 1), got 1.2",
        "stages: [{method: prune, layers: [fc9]}]": "'fc9' matches no layer; layers: fc1, fc2, fc3",
    }
    for i, (text, needle) in enumerate(cases.items()):
        recipe = tmp_path / f"r{i}.yaml"
        recipe.write_text(text)
        args = ["compress", "zoo:lenet300", "--data", "digits", "--recipe", str(recipe)]
        assert main([*args, "-o", str(tmp_path / "o.mzip")]) == 2
        err = capsys.readouterr().err
        assert needle in err and err.count("\n") == 1, err
    assert not (tmp_path / "o.mzip").exists()
