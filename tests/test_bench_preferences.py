"""The preferences benchmark end to end at a toy size: every part, and merging a later variant."""

import csv

from embodied.bench import preferences


def test_preferences_benchmark_end_to_end_and_merge(tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "datasets"))
    out = tmp_path / "results" / "preferences.md"
    common = ["--target", "reach-v3", "--quality", "mixed", "--sources", "push-v3", "--seeds", "0", "--episodes", "3",
              "--labels", "20", "--held-out", "20", "--segment-len", "10", "--segments", "20", "--pairs", "30",
              "--steps", "4", "--reward-steps", "3", "--evals", "1", "--eval-episodes", "1", "--workers", "1",
              "--run-dir", str(tmp_path / "runs"), "--out", str(out)]  # fmt: skip
    preferences.main([*common, "--teachers", "oracle", "mistake ε=0.3", "--variants", "true reward", "ipl",
                      "scripted mistake ε=0.3"])  # fmt: skip
    preferences.main([*common, "--teachers", "--variants", "scripted", "--sources", "--state-reward", "--merge"])

    with open(out.with_suffix(".csv"), newline="") as handle:
        rows = list(csv.DictReader(handle))
    ran = {(r["part"], r["variant"]) for r in rows}
    assert ran == {("a", "oracle"), ("a", "mistake ε=0.3"), ("b", "true reward"), ("b", "ipl"),
                   ("b", "pearl from push-v3"), ("b", "scripted r(s)"),
                   ("b", "scripted mistake ε=0.3")}  # the first invocation's rows are kept
    oracle = next(r for r in rows if r["variant"] == "oracle")
    assert float(oracle["label_agreement"]) == 1.0 and 0.0 <= float(oracle["accuracy"]) <= 1.0
    mistaken = next(r for r in rows if r["variant"] == "mistake ε=0.3")
    assert float(mistaken["label_agreement"]) < 1.0
    pearl = next(r for r in rows if r["variant"] == "pearl from push-v3")
    assert 0.0 <= float(pearl["label_agreement"]) <= 1.0 and pearl["success_rate"] != ""
    noisy = next(r for r in rows if r["variant"] == "scripted mistake ε=0.3")
    assert float(noisy["label_agreement"]) < 1.0 and noisy["success_rate"] != ""
    text = out.read_text()
    assert text.count("`python -m embodied.bench.preferences") == 2 and "| scripted mistake ε=0.3 |" in text
    assert text.count("| scripted r(s) |") == 1  # the state-only oracle variant is not a noisy teacher's
    for expected in ("| oracle | 1.00 ± 0.00 |", "| ipl |", "| scripted r(s) |", "| pearl from push-v3 |", "GW transport"):
        assert expected in text
    assert out.with_suffix(".png").exists()

    # The transfer survey: agreement only, per source and ε, merged beside the rest.
    preferences.main([*common, "--teachers", "--variants", "--sources", "--transfer-sources", "push-v3",
                      "--gw-epsilons", "0.005", "0.05", "--merge"])  # fmt: skip
    with open(out.with_suffix(".csv"), newline="") as handle:
        rows = list(csv.DictReader(handle))
    survey = {r["variant"]: r for r in rows if r["part"] == "t"}
    assert set(survey) == {"push-v3 ε=0.005", "push-v3 ε=0.05"}
    assert all(0.0 <= float(r["label_agreement"]) <= 1.0 and r["success_rate"] == "" for r in survey.values())
    assert {(r["part"], r["variant"]) for r in rows} >= ran  # nothing earlier is lost
    text = out.read_text()
    assert "| source task | ε = 0.005 | ε = 0.05 |" in text and "| push-v3 |" in text

    # PEARL by Meta-World's distances with fused GW: the settings name the rows, a policy
    # variant trains on its labels, and the survey gets the label-free rule beside it.
    preferences.main([*common, "--teachers", "--variants", "--transfer-sources", "push-v3", "--gw-epsilons", "0.005",
                      "--pearl-features", "distances", "--fused-alpha", "0.5", "--merge"])  # fmt: skip
    with open(out.with_suffix(".csv"), newline="") as handle:
        rows = list(csv.DictReader(handle))
    tagged = "push-v3 by distances, fused α=0.5"
    assert {r["variant"] for r in rows if r["part"] == "t"} == {
        "push-v3 ε=0.005", "push-v3 ε=0.05", f"{tagged} ε=0.005", preferences.DISTANCE_RULE}
    policy = next(r for r in rows if r["variant"] == f"pearl from {tagged}")
    assert 0.0 <= float(policy["label_agreement"]) <= 1.0 and policy["success_rate"] != ""
    text = out.read_text()
    assert f"| {tagged} |" in text and f"| pearl from {tagged} |" in text and "| pearl from push-v3 |" in text
    assert f"Without any source: {preferences.DISTANCE_RULE}" in text
    assert not any(line.startswith(f"| {preferences.DISTANCE_RULE}") for line in text.splitlines())

    # IPL straight from the transferred labels, and from the rule's, in place of reward model + IQL.
    preferences.main([*common, "--teachers", "--variants", "--pearl-features", "distances", "--fused-alpha", "0.5",
                      "--ipl-on-transfer", "--merge"])  # fmt: skip
    with open(out.with_suffix(".csv"), newline="") as handle:
        rows = {r["variant"]: r for r in csv.DictReader(handle) if r["part"] == "b"}
    for variant in (f"ipl on pearl from {tagged}", f"ipl on {preferences.DISTANCE_RULE}"):
        assert 0.0 <= float(rows[variant]["label_agreement"]) <= 1.0 and rows[variant]["success_rate"] != ""
        assert rows[variant]["accuracy"] == ""  # no reward model
        assert f"| {variant} |" in out.read_text()
    from embodied.data.preferences import list_preferences

    assert "bench-ipl-on-pearl-from-push-v3-by-distances-fused-alpha0.5-seed0" in list_preferences(
        "metaworld-reach-mixed")

    # IQL reads the reward models' rewards as they are; scaled like the env's, the rows are apart.
    import yaml

    preferences.main([*common, "--teachers", "--variants", "scripted", "--sources", "--iql-reward-scale", "returns",
                      "--merge"])  # fmt: skip
    with open(out.with_suffix(".csv"), newline="") as handle:
        rows = {r["variant"]: r for r in csv.DictReader(handle) if r["part"] == "b"}
    assert rows["scripted (r scaled)"]["success_rate"] != "" and "pearl from push-v3" in rows
    assert "| scripted (r scaled) |" in out.read_text()

    def reward_scale(run: str) -> str:
        return yaml.safe_load((tmp_path / "runs" / run / "config.yaml").read_text())["algo"]["reward_scale"]

    assert reward_scale("iql-metaworld-reach-mixed-rm-scripted-r-scaled-seed0") == "returns"
    assert reward_scale("iql-metaworld-reach-mixed-rm-pearl-from-push-v3-seed0") == "auto"
    from embodied.data import load_dataset

    assert load_dataset("metaworld-reach-mixed-rm-scripted-r-scaled-seed0").learned_rewards

    # (c) at another number of labels: IPL and reward model + IQL on the same 10 labels.
    # The label-free distance rule's labels → Gaussian reward model → IQL rides along.
    preferences.main([*common, "--teachers", "--variants", "scripted", preferences.DISTANCE_RULE, "--sources",
                      "--label-sweep", "10", "--merge"])  # fmt: skip
    with open(out.with_suffix(".csv"), newline="") as handle:
        rows = {r["variant"]: r for r in csv.DictReader(handle) if r["part"] == "b"}
    rule = rows[preferences.DISTANCE_RULE]
    assert 0.0 <= float(rule["accuracy"]) <= 1.0 and rule["success_rate"] != ""
    assert rows["scripted, 10 labels"]["success_rate"] != "" and rows["ipl, 10 labels"]["success_rate"] != ""
    assert "ipl" in rows and "scripted (r scaled)" in rows  # earlier rows stay
    assert "bench-scripted-10-L10-seed0" in list_preferences("metaworld-reach-mixed")
    text = out.read_text()
    assert "### (c) by the number of labels" in text
    assert "| 10 |" in text and "| 20 |" in text and "| ipl, 10 labels |" in text

    # --rewrite writes the same page again from the CSV, running nothing and adding no command.
    out.write_text(text.replace("### (c) by the number of labels", "stale"))
    preferences.main([*common, "--rewrite"])
    assert out.read_text() == text


def test_unknown_variant_is_refused(capsys):
    import pytest

    assert preferences.noisy_teacher("scripted mistake ε=0.3 r(s)") == "mistake ε=0.3"
    assert preferences.noisy_teacher("scripted r(s)") is None  # the oracle, reward model of the state

    with pytest.raises(SystemExit):
        preferences.main(["--variants", "scripted sloppy"])
    assert "unknown teacher/variant ['scripted sloppy']" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        preferences.main(["--rewrite", "--out", "/nonexistent/preferences.md"])
    assert "no earlier results" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        preferences.main(["--ipl-on-transfer", "--iql-reward-scale", "returns"])
    assert "IPL, which reads no reward" in capsys.readouterr().err
    assert preferences.noisy_teacher("scripted mistake ε=0.3 r(s) (r scaled)") == "mistake ε=0.3"
    assert preferences.ascii_slug("scripted r(s) (r scaled)") == "scripted-state-r-scaled"
    assert preferences.base_variant("scripted mistake ε=0.3 (r scaled), 100 labels") == "scripted mistake ε=0.3"
    assert preferences.label_count("ipl, 100 labels", 500) == 100 and preferences.label_count("ipl", 500) == 500
