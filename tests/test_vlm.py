"""VLM preference labels: the two-stage prompt over a real loopback connection, parsing,
"cannot tell" kept apart, the answer cache across a killed run, and the CLI."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from embodied.cli import main
from embodied.data.collect import collect
from embodied.data.preferences import load_preferences
from embodied.llm import ChatClient, LLMConfig
from embodied.rewards import vlm


@pytest.fixture(scope="module")
def dataset_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("datasets")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MINARI_DATASETS_PATH", str(root))
        options = {"obs": "state+pixels", "image_size": 48, "terminate_on_success": False, "max_episode_steps": 30}
        collect("nav/open-v0", 6, name="nav-frames", policy="scripted", noise=1.0, env_options=options,
                progress=False)  # fmt: skip
        collect("nav/open-v0", 2, name="nav-state", policy="random", progress=False,
                env_options={"max_episode_steps": 30})  # fmt: skip
    return root


@pytest.fixture(autouse=True)
def use_datasets(dataset_root, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(dataset_root))


@pytest.fixture(scope="module")
def frame_scores(dataset_root):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MINARI_DATASETS_PATH", str(dataset_root))
        return vlm.frame_rewards("nav-frames")


class OracleServer:
    """`/v1/chat/completions` on 127.0.0.1 that answers like a VLM from the true frame rewards."""

    def __init__(self, oracle: vlm.OracleVLM):
        self.requests: list[dict] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                request = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                server.requests.append(request)
                text = oracle.chat(request["messages"])
                body = json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": request["model"],
                                   "choices": [{"index": 0, "finish_reason": "stop",
                                                "message": {"role": "assistant", "content": text}}]}).encode()  # fmt: skip
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/v1"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def serve():
    servers = []

    def start(oracle):
        servers.append(OracleServer(oracle))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


def client(server) -> ChatClient:
    return ChatClient(LLMConfig(base_url=server.url, model="test-vlm", api_key="k", retry_backoff_s=0.0,
                                timeout_s=10, max_retries=0), environ={})  # fmt: skip


def last_frame_rewards(labels, frame_scores):
    """The oracle's score of each labelled segment's last frame, (N, 2)."""
    from embodied.data.episodes import read_episodes
    from embodied.llm import image_data_url

    frames = [e.observations["pixels"] for e in read_episodes("nav-frames")]
    return np.array([[frame_scores[image_data_url(frames[e][s + labels.segment_len])] for e, s in zip(ee, ss)]
                     for ee, ss in zip(labels.episodes, labels.starts)])  # fmt: skip


@pytest.mark.parametrize("text, answer", [
    ("0", 0), ("1", 1), ("-1", -1), ("Answer: 1", 1), ("**0**", 0), ("The answer is -1.", -1),
    ("Observation 2 is closer.\nSo my answer:\n1", 1), ("`0`", 0),
    ("", None), ("maybe", None), ("0 or 1", None), ("2", None), ("10", None), ("0.5", None),
])  # fmt: skip
def test_answers_parse_or_are_none(text, answer):
    assert vlm.parse_answer(text) == answer


def test_two_stage_prompt_over_a_real_connection_labels_like_the_oracle(serve, frame_scores, tmp_path):
    server = serve(vlm.OracleVLM(frame_scores))
    teacher = vlm.VLMTeacher(client(server), "go to the magenta ring", vlm.LabelCache(tmp_path / "cache.jsonl"))
    labels = vlm.label_with_vlm("nav-frames", teacher, 40, 5, seed=0)
    assert len(server.requests) == 80  # two stages per query
    first, second = server.requests[0]["messages"][0]["content"], server.requests[1]["messages"][0]["content"]
    images = [p["image_url"]["url"] for p in first if p["type"] == "image_url"]
    assert len(images) == 2 and all(url.startswith("data:image/png;base64,") for url in images)
    assert "go to the magenta ring" in first[0]["text"] and "Observation 1" in first[0]["text"]
    assert isinstance(second, str) and "Verdict: observation" in second and "-1" in second  # the analysis, no image
    truth = last_frame_rewards(labels, frame_scores)
    assert len(labels) == 40 and labels.info["cannot_tell"] == 0 and labels.info["unparsed"] == 0  # margin 0
    np.testing.assert_array_equal(labels.preference, (truth[:, 0] > truth[:, 1]).astype(np.float32))


def test_cannot_tell_and_unparsed_replies_never_become_labels(frame_scores, tmp_path):
    garbled = vlm.VLMTeacher(vlm.OracleVLM(frame_scores, garble=1.0), "go", vlm.LabelCache(tmp_path / "a.jsonl"))
    labels = vlm.label_with_vlm("nav-frames", garbled, 30, 5, seed=1)
    assert len(labels) == 0 and labels.info["unparsed"] == 30 and labels.info["cannot_tell"] == 30
    unsure = vlm.VLMTeacher(vlm.OracleVLM(frame_scores, margin=1e9), "go", vlm.LabelCache(tmp_path / "b.jsonl"))
    labels = vlm.label_with_vlm("nav-frames", unsure, 30, 5, seed=1)
    assert len(labels) == 0 and labels.info["cannot_tell"] == 30 and labels.info["unparsed"] == 0
    noisy = vlm.VLMTeacher(vlm.OracleVLM(frame_scores, mistake=0.3, seed=2), "go", vlm.LabelCache(tmp_path / "c.jsonl"))
    labels = vlm.label_with_vlm("nav-frames", noisy, 200, 5, seed=1)
    truth = last_frame_rewards(labels, frame_scores)
    decided = truth[:, 0] != truth[:, 1]
    wrong = ((truth[decided, 0] > truth[decided, 1]) != (labels.preference[decided] > 0.5)).mean()
    assert 0.15 < wrong < 0.45  # the mistake rate, within sampling error


def test_the_cache_survives_a_killed_run_and_nothing_is_asked_twice(frame_scores, tmp_path):
    class Killed(Exception):
        pass

    class DiesAfter(vlm.OracleVLM):
        def chat(self, messages, **options):
            if self.calls == 2 * 7:  # the 8th query never completes
                raise Killed
            return super().chat(messages, **options)

    cache_path = tmp_path / "cache.jsonl"
    with pytest.raises(Killed):
        vlm.label_with_vlm("nav-frames", vlm.VLMTeacher(DiesAfter(frame_scores), "go", vlm.LabelCache(cache_path)),
                           20, 5, seed=3)  # fmt: skip
    assert len(cache_path.read_text().splitlines()) == 7
    with open(cache_path, "a") as handle:
        handle.write('{"key": "torn')  # the kill also cut a line short
    resumed_oracle = vlm.OracleVLM(frame_scores)
    resumed = vlm.VLMTeacher(resumed_oracle, "go", vlm.LabelCache(cache_path))
    labels = vlm.label_with_vlm("nav-frames", resumed, 20, 5, seed=3)
    assert resumed_oracle.calls == 2 * 13 and labels.info["from_cache"] == 7
    straight = vlm.label_with_vlm("nav-frames", vlm.VLMTeacher(vlm.OracleVLM(frame_scores), "go",
                                                               vlm.LabelCache(tmp_path / "other.jsonl")), 20, 5, seed=3)
    np.testing.assert_array_equal(labels.preference, straight.preference)
    np.testing.assert_array_equal(labels.episodes, straight.episodes)


def test_clips_send_several_frames_per_segment(serve, frame_scores, tmp_path):
    server = serve(vlm.OracleVLM(frame_scores))
    teacher = vlm.VLMTeacher(client(server), "go", vlm.LabelCache(tmp_path / "c.jsonl"), frames=3)
    vlm.label_with_vlm("nav-frames", teacher, 2, 6, seed=0)
    parts = server.requests[0]["messages"][0]["content"]
    assert sum(p["type"] == "image_url" for p in parts) == 6 and "clip of 3 frames" in parts[0]["text"]


def test_cli_labels_with_a_vlm_and_reports_what_it_could_not_tell(serve, frame_scores, capsys):
    server = serve(vlm.OracleVLM(frame_scores, garble=0.2, seed=5))
    argv = ["prefs", "label", "nav-frames", "go to the ring", "--teacher", "vlm", "--model", "test-vlm",
            "--base-url", server.url, "--pairs", "25", "--segment-len", "5", "--name", "vlm25"]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    labels = load_preferences("nav-frames", "vlm25")
    assert labels.info["teacher"] == "vlm" and labels.info["unparsed"] > 0
    assert f"{len(labels)} labels" in out and f"of which {labels.info['unparsed']} replies did not parse" in out
    requests = len(server.requests)
    assert main([*argv, "--overwrite"]) == 0  # everything from the cache
    assert len(server.requests) == requests and "(25 answered from" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["prefs", "label", "nav-frames", "--teacher", "vlm", "--pairs", "3"], "needs the task in words"),
    (["prefs", "label", "nav-state", "go", "--teacher", "vlm", "--model", "m", "--base-url", "http://127.0.0.1:9/v1",
      "--pairs", "3", "--segment-len", "5"], "obs=state+pixels"),
    (["prefs", "label", "nav-frames", "go", "--teacher", "oracle", "--pairs", "3"], "vlm teacher only"),
    (["prefs", "label", "nav-frames", "go", "--teacher", "vlm", "--model", "m", "--base-url", "http://127.0.0.1:9/v1",
      "--timeout", "2", "--pairs", "3", "--segment-len", "5"], "run the same command again"),
])  # fmt: skip
def test_cli_vlm_errors(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_vlm_labels_train_a_state_reward_model_and_iql_learns_from_the_relabelled_copy(serve, frame_scores, tmp_path,
                                                                                      capsys):  # fmt: skip
    from embodied.data import load_dataset, read_episodes
    from embodied.data.episodes import DatasetError, dataset_spaces
    from embodied.rewards.models import load_reward_model
    from embodied.run.config import parse
    from embodied.run.fit import train

    server = serve(vlm.OracleVLM(frame_scores))
    assert main(["prefs", "label", "nav-frames", "go to the ring", "--teacher", "vlm", "--model", "m", "--base-url",
                 server.url, "--pairs", "30", "--segment-len", "5", "--name", "v30"]) == 0  # fmt: skip
    model_path = tmp_path / "rm.pt"
    assert main(["prefs", "reward", "nav-frames", "--labels", "v30", "--observation-key", "state", "--out",
                 str(model_path), "--steps", "20", "--members", "2", "--batch-size", "8", "--relabel",
                 "nav-frames-vlm"]) == 0  # fmt: skip
    capsys.readouterr()
    assert dataset_spaces("nav-frames-vlm")["observation_space"].shape == (8,)  # the state only
    copy = next(iter(read_episodes("nav-frames-vlm")))
    model = load_reward_model(model_path)
    import torch

    expected = model.rewards(torch.as_tensor(copy.observations[:-1], dtype=torch.float32), None if
                             model.config.inputs == "state" else torch.as_tensor(copy.actions)).numpy()  # fmt: skip
    np.testing.assert_allclose(copy.rewards, expected, rtol=1e-5, atol=1e-6)
    assert "true_reward" in copy.infos
    run = train(parse({
        "algo": {"name": "iql", "hidden_dims": [16, 16]}, "env": {"id": "nav/open-v0", "options": {"max_episode_steps": 30}},
        "data": {"name": "nav-frames-vlm"},
        "train": {"steps": 10, "batch_size": 8, "eval_every": 0, "eval_episodes": 1, "log_every": 5,
                  "checkpoint_every": 10, "run_dir": str(tmp_path / "runs"), "progress": False},
    }))  # fmt: skip
    assert (run / "checkpoints" / "step_10.pt").exists()
    with pytest.raises(DatasetError, match="no observation entry 'depth'"):
        load_dataset("nav-frames").observation_view("depth")
    with pytest.raises(DatasetError, match="one array"):
        load_dataset("nav-state").observation_view("state")


def test_vlm_benchmark_end_to_end_at_a_toy_size(tmp_path, monkeypatch):
    from embodied.bench import vlm_feedback

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "datasets"))
    out = tmp_path / "results" / "vlm.md"
    vlm_feedback.main(["--env", "nav/open-v0", "--dataset", "toy-frames", "--episodes", "4", "--image-size", "32",
                       "--mistakes", "0.2", "--pairs", "20", "--segment-len", "5", "--reward-steps", "3", "--seeds",
                       "0", "--steps", "4", "--evals", "1", "--eval-episodes", "1", "--workers", "1", "--run-dir",
                       str(tmp_path / "runs"), "--out", str(out)])  # fmt: skip
    text = out.read_text()
    assert "| true reward | — |" in text and "| VLM, mistake 0.2 |" in text and "`python -m embodied.bench.vlm_feedback" in text
    assert len(out.with_suffix(".csv").read_text().splitlines()) == 3 and out.with_suffix(".png").exists()
    assert (tmp_path / "runs" / "vlm-cache" / "mistake0.2-seed0.jsonl").exists()
