"""The LLM path over a real loopback connection: client, replay, `reward generate`, `reward refine`.

A small HTTP server on 127.0.0.1 speaks `/v1/chat/completions`, answers from a script
and records every request, so the tests see exactly what the openai package sends.
"""

from __future__ import annotations

import base64
import io
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import imageio.v3 as iio
import numpy as np
import pytest
import yaml

import embodied.llm.client as client_module
from embodied.cli import main
from embodied.llm import (
    ChatClient,
    LLMConfig,
    LLMConfigError,
    LLMConnectionError,
    LLMHTTPError,
    LLMResponseError,
    RecordingClient,
    ReplayClient,
    ReplayMissError,
    make_client,
    system_message,
    user_message,
)
from embodied.rewards.text2reward import generate, prompt

REACH_PROGRAM = """\
import numpy as np

def compute_dense_reward(self, action, obs) -> float:
    # closer to the goal is better; small actions are cheaper
    distance = np.linalg.norm(self.robot.ee_position - self.goal_position)
    return float(-distance - 0.01 * np.square(action).sum())
"""
HOSTILE_PROGRAM = """\
import os

def compute_dense_reward(self, action, obs) -> float:
    os.system("echo hi")
    return 0.0
"""


def fenced(program: str, before: str = "This task means moving the gripper to the goal.") -> str:
    return f"{before}\n\n```python\n{program}```\n"


# ----------------------------------------------------------------------------- loopback server


class ChatServer:
    """`/v1/chat/completions` on 127.0.0.1: scripted replies, recorded requests."""

    def __init__(self):
        self.requests: list[dict] = []
        self.script: list = []  # str (an answer) or (status, body bytes, content type)
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                server.requests.append({"path": self.path, "json": json.loads(body),
                                        "headers": {k.lower(): v for k, v in self.headers.items()}})
                if self.path != "/v1/chat/completions":
                    self._send(404, json.dumps({"error": {"message": f"no route {self.path}"}}).encode())
                    return
                reply = server.script.pop(0) if server.script else (
                    500, b'{"error": {"message": "test server: no scripted answer"}}', "application/json")
                if isinstance(reply, str):
                    model = server.requests[-1]["json"]["model"]
                    reply = (200, json.dumps(completion(reply, model)).encode(), "application/json")
                self._send(*reply)

            def _send(self, status: int, body: bytes, content_type: str = "application/json"):
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):  # keep pytest output clean
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()

    def user_texts(self, index: int) -> list[str]:
        """The user turns' texts of request ``index``."""
        return [m["content"] for m in self.requests[index]["json"]["messages"] if m["role"] == "user"]


def completion(text: str, model: str) -> dict:
    return {
        "id": "chatcmpl-test", "object": "chat.completion", "created": 0, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }  # fmt: skip


@pytest.fixture
def server():
    chat_server = ChatServer()
    yield chat_server
    chat_server.stop()


def client_for(server: ChatServer, **options) -> ChatClient:
    config = LLMConfig(base_url=server.url, model="test-model", api_key="test-key", retry_backoff_s=0.0, timeout_s=10,
                       **options)  # fmt: skip
    return ChatClient(config, environ={})


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# ----------------------------------------------------------------------------- client


def test_text_and_image_messages_as_sent(server):
    server.script = ["a red square", "plain answer"]
    client = client_for(server)
    image = np.zeros((8, 6, 3), np.uint8)
    image[2:5, 1:3] = (255, 0, 0)
    messages = [system_message("You label images."), user_message("What is in the picture?", images=[image], detail="low")]
    assert client.chat(messages) == "a red square"
    assert client.chat([user_message("hello")], temperature=0.2) == "plain answer"

    first = server.requests[0]
    assert first["path"] == "/v1/chat/completions"
    assert first["headers"]["authorization"] == "Bearer test-key"
    assert first["json"]["model"] == "test-model"
    sent = first["json"]["messages"]
    assert sent[0] == {"role": "system", "content": "You label images."}
    text_part, image_part = sent[1]["content"]
    assert text_part == {"type": "text", "text": "What is in the picture?"}
    assert image_part["type"] == "image_url" and image_part["image_url"]["detail"] == "low"
    url = image_part["image_url"]["url"]
    assert url.startswith("data:image/png;base64,")
    decoded = iio.imread(io.BytesIO(base64.b64decode(url.split(",", 1)[1])), extension=".png")
    np.testing.assert_array_equal(decoded, image)  # the pixels arrive unchanged

    second = server.requests[1]["json"]
    assert second["messages"] == [{"role": "user", "content": "hello"}] and second["temperature"] == 0.2


def test_configuration_from_environment(server):
    server.script = ["one", "two"]
    environ = {"EMBODIED_LLM_BASE_URL": server.url, "EMBODIED_LLM_MODEL": "env-model", "EMBODIED_LLM_API_KEY": "k1",
               "OPENAI_API_KEY": "ignored"}  # fmt: skip
    assert ChatClient(environ=environ).chat([user_message("hi")]) == "one"
    fallback = {"OPENAI_BASE_URL": server.url, "OPENAI_API_KEY": "k2", "EMBODIED_LLM_MODEL": "m2"}
    assert ChatClient(environ=fallback).chat([user_message("hi")]) == "two"
    assert [r["headers"]["authorization"] for r in server.requests] == ["Bearer k1", "Bearer k2"]
    assert [r["json"]["model"] for r in server.requests] == ["env-model", "m2"]
    with pytest.raises(LLMConfigError, match="EMBODIED_LLM_BASE_URL"):
        ChatClient(LLMConfig(model="m"), environ={})
    with pytest.raises(LLMConfigError, match="EMBODIED_LLM_MODEL"):
        ChatClient(LLMConfig(base_url=server.url), environ={})


def test_retries_a_500_then_succeeds(server):
    server.script = [(500, b'{"error": {"message": "warming up"}}', "application/json"), "finally"]
    assert client_for(server, max_retries=2).chat([user_message("hi")]) == "finally"
    assert len(server.requests) == 2

    server.script = [(503, b'{"error": {"message": "overloaded"}}', "application/json")] * 2
    with pytest.raises(LLMHTTPError, match=r"after 2 attempt\(s\): HTTP 503: overloaded") as failure:
        client_for(server, max_retries=1).chat([user_message("hi")])
    assert failure.value.status == 503


def test_connection_refused_is_a_clear_error():
    url = f"http://127.0.0.1:{closed_port()}/v1"
    client = ChatClient(LLMConfig(base_url=url, model="m", max_retries=1, retry_backoff_s=0.0), environ={})
    with pytest.raises(LLMConnectionError) as failure:
        client.chat([user_message("hi")])
    message = str(failure.value)
    assert url in message and "could not connect" in message and "after 2 attempt(s)" in message
    assert "refused" in message.lower()


def test_client_error_carries_the_servers_message_without_retrying(server):
    body = json.dumps({"error": {"message": "The model `nope` does not exist.", "type": "invalid_request_error"}})
    server.script = [(404, body.encode(), "application/json")]
    with pytest.raises(LLMHTTPError, match="HTTP 404 for model 'test-model': The model `nope` does not exist.") as failure:
        client_for(server, max_retries=3).chat([user_message("hi")])
    assert failure.value.status == 404 and len(server.requests) == 1


@pytest.mark.parametrize(
    "reply, message",
    [
        ((200, b'{"choices": [{"message": ', "application/json"), "not valid JSON"),
        ((200, b"<html>proxy page</html>", "text/html"), "not chat-completion JSON"),
        ((200, b'{"object": "list", "data": []}', "application/json"), "not a chat completion"),
        ("", "empty answer"),
    ],
)
def test_malformed_or_empty_replies_are_clear_errors(server, reply, message):
    server.script = [reply]
    with pytest.raises(LLMResponseError, match=message):
        client_for(server).chat([user_message("hi")])


# ----------------------------------------------------------------------------- replay


def test_record_then_replay_with_the_server_stopped(server, tmp_path):
    recording = tmp_path / "answers.jsonl"
    server.script = ["first", "second", "again"]
    recorder = make_client(LLMConfig(base_url=server.url, model="test-model", record=str(recording)))
    assert isinstance(recorder, RecordingClient)
    image = np.full((4, 4, 3), 7, np.uint8)
    conversation = [user_message("Describe.", images=[image])]
    assert recorder.chat(conversation) == "first"
    assert recorder.chat([user_message("Write a reward.")]) == "second"
    assert recorder.chat([user_message("Write a reward.")]) == "again"  # same prompt sampled twice
    server.stop()

    lines = [json.loads(line) for line in recording.read_text().splitlines()]
    assert [line["response"] for line in lines] == ["first", "second", "again"]
    assert lines[1]["prompt"] == "Write a reward." and lines[0]["model"] == "test-model"

    replay = make_client(LLMConfig(replay=str(recording)))  # the model is read from the file
    assert isinstance(replay, ReplayClient) and replay.model == "test-model"
    assert replay.chat(conversation) == "first"
    assert replay.chat([user_message("Write a reward.")]) == "second"
    assert replay.chat([user_message("Write a reward.")]) == "again"
    assert replay.chat([user_message("Write a reward.")]) == "again"  # then the last one repeats
    with pytest.raises(ReplayMissError) as miss:
        replay.chat([user_message("Something never asked before, with a long tail " + "x" * 500)])
    assert str(recording) in str(miss.value) and "Something never asked before" in str(miss.value)
    assert "x" * 200 not in str(miss.value)  # only a short prefix of the prompt
    with pytest.raises(ReplayMissError):  # the model is part of the key
        ReplayClient(recording, model="other-model").chat(conversation)


# ----------------------------------------------------------------------------- code extraction and prompts


def test_extract_code_takes_the_last_defining_python_block():
    answer = (
        "Step 1: ...\n```python\ndef compute_dense_reward(self, action, obs) -> float:\n    return 0.0\n```\n"
        "A better version:\n```python\n" + REACH_PROGRAM + "```\nAnd a usage note:\n```bash\npython train.py\n```"
    )
    assert generate.extract_code(answer) == REACH_PROGRAM
    with pytest.raises(generate.CodeExtractionError, match="no ```python code block"):
        generate.extract_code("I think the reward should be the distance.")
    with pytest.raises(generate.CodeExtractionError, match="does not define"):
        generate.extract_code("```python\nreward = -distance\n```")
    with pytest.raises(generate.CodeExtractionError, match="cut off"):
        generate.extract_code("Here:\n```python\n" + REACH_PROGRAM[:80])


def test_few_shot_examples_are_the_most_similar_tasks(tmp_path):
    def program(env_id, instruction):
        return prompt.LibraryProgram(env_id, instruction, REACH_PROGRAM, tmp_path / "x.py")

    library = [
        program("metaworld/button-press-v3", "Press a button."),
        program("metaworld/drawer-close-v3", "Close a drawer by its handle."),
        program("metaworld/drawer-open-v3", "Open a drawer by its handle."),
        program("metaworld/window-open-v3", "Push and open a sliding window by its handle."),
        program("mujoco/Hopper-v5", "Hop forward."),
    ]
    chosen = prompt.nearest_programs("metaworld/drawer-open-v3", "Open the drawer by its handle.", 2, library)
    assert [p.env_id for p in chosen] == ["metaworld/drawer-close-v3", "metaworld/window-open-v3"]
    text = prompt.task_prompt("metaworld/drawer-open-v3", "Open the drawer.", chosen, description="class Robot: ...\nThe action space is Box(-1, 1, (4,)).")
    assert text.index("Tasks to be fulfilled: Close a drawer by its handle.") < text.index("I want it to fulfill")


# ----------------------------------------------------------------------------- reward generate / refine

def llm_args(server: ChatServer) -> list[str]:
    return ["--base-url", server.url, "--model", "test-model", "--check-steps", "20"]


def test_reward_generate_writes_a_checked_program(server, tmp_path, capsys):
    out = tmp_path / "programs" / "reach.py"
    server.script = [fenced(REACH_PROGRAM)]
    code = main(["reward", "generate", "metaworld/reach-v3", "Move the gripper to the goal.", *llm_args(server),
                 "--out", str(out)])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    assert str(out) in capsys.readouterr().out
    written = out.read_text()
    assert written.endswith(REACH_PROGRAM) and "# Instruction: Move the gripper to the goal." in written
    assert not list(out.parent.glob("*.tmp"))  # written through a temporary file, then renamed

    (request,) = server.requests
    assert request["json"]["model"] == "test-model"
    (text,) = server.user_texts(0)
    assert "I want it to fulfill the following task: Move the gripper to the goal." in text
    assert "think step by step" in text and "def compute_dense_reward(self, action, obs) -> float" in text
    assert "ee_position" in text and "goal_position" in text  # the environment's description

    assert main(["reward", "check", "metaworld/reach-v3", str(out), "--steps", "20"]) == 0
    # The program is never overwritten without --overwrite.
    server.script = [fenced(REACH_PROGRAM)]
    assert main(["reward", "generate", "metaworld/reach-v3", "Reach.", *llm_args(server), "--out", str(out)]) == 2
    assert "exists" in capsys.readouterr().err and out.read_text() == written
    assert len(server.requests) == 1  # refused before asking the LLM


def test_reward_generate_few_shot_recorded_then_replayed(server, tmp_path, capsys):
    recording, live, replayed = tmp_path / "answers.jsonl", tmp_path / "live.py", tmp_path / "replayed.py"
    instruction = "Open the drawer by its handle."
    server.script = [fenced(REACH_PROGRAM)]
    argv = ["reward", "generate", "metaworld/drawer-open-v3", instruction, "--few-shot", "2", "--check-steps", "20"]
    assert main([*argv, "--base-url", server.url, "--model", "test-model", "--record", str(recording),
                 "--out", str(live)]) == 0  # fmt: skip
    (text,) = server.user_texts(0)
    # The two nearest library programs by task words, never the task's own.
    assert text.count("Tasks to be fulfilled:") == 2
    assert "Tasks to be fulfilled: Open the door by pulling its handle." in text
    assert "Tasks to be fulfilled: Open the drawer by pulling its handle." not in text
    assert "# Few-shot examples: metaworld/door-open-v3, metaworld/window-open-v3" in live.read_text()
    server.stop()

    assert main([*argv, "--replay", str(recording), "--out", str(replayed)]) == 0, capsys.readouterr().err
    assert replayed.read_text().endswith(REACH_PROGRAM)
    assert main([*argv[:3], "Another instruction.", "--replay", str(recording), "--out", str(tmp_path / "x.py")]) == 2
    err = capsys.readouterr().err
    assert "no recorded answer in" in err and str(recording) in err and not (tmp_path / "x.py").exists()


def test_reward_generate_feeds_a_refused_program_back(server, tmp_path, capsys):
    out = tmp_path / "reach.py"
    server.script = [fenced(HOSTILE_PROGRAM), fenced(REACH_PROGRAM, "Sorry, without os:")]
    code = main(["reward", "generate", "metaworld/reach-v3", "Reach the goal.", *llm_args(server), "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    assert out.read_text().endswith(REACH_PROGRAM) and "after 2 attempt(s)" in out.read_text()

    assert len(server.requests) == 2
    second = server.requests[1]["json"]["messages"]
    assert [m["role"] for m in second] == ["system", "user", "assistant", "user"]
    assert "import os" in second[2]["content"]  # the refused answer is part of the conversation
    feedback = second[3]["content"]
    assert "failed" in feedback and "os" in feedback.split("Please fix it")[0]  # the error text went back


def test_reward_generate_gives_up_with_the_reasons(server, tmp_path, capsys):
    server.script = [fenced(HOSTILE_PROGRAM), "I cannot write code today."]
    out = tmp_path / "never.py"
    code = main(["reward", "generate", "metaworld/reach-v3", "Reach.", *llm_args(server), "--out", str(out),
                 "--retries", "1"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "2 attempt(s)" in err and "no ```python code block" in err and "attempt 1" in err
    assert not out.exists()


def test_reward_generate_reports_an_unreachable_endpoint(monkeypatch, capsys):
    monkeypatch.setattr(client_module, "time", SimpleNamespace(sleep=lambda seconds: None))  # no backoff waits
    url = f"http://127.0.0.1:{closed_port()}/v1"
    code = main(["reward", "generate", "metaworld/reach-v3", "Reach.", "--base-url", url, "--model", "m",
                 "--timeout", "5"])  # fmt: skip
    assert code == 2 and "could not connect" in capsys.readouterr().err


def fake_run(tmp_path: Path) -> Path:
    run_dir = tmp_path / "runs" / "sac-reach-seed0"
    (run_dir / "reward_code").mkdir(parents=True)
    program = "# Instruction: Move the gripper to the goal.\n" + REACH_PROGRAM
    (run_dir / "reward_code" / "v1.py").write_text(program)
    config = {"algo": {"name": "sac"}, "env": {"id": "metaworld/reach-v3", "options": {}},
              "reward_code": str(run_dir / "reward_code" / "v1.py"), "train": {"steps": 3000, "seed": 0}}  # fmt: skip
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    (run_dir / "eval.csv").write_text(
        "step,eval/length,eval/return,eval/success_rate\n"
        "1000,500.0,-120.5,0.0\n2000,500.0,-80.25,0.1\n3000,500.0,-40.0,0.3\n"
    )
    (run_dir / "train.csv").write_text("step,train/critic_loss,train/episode_return\n1000,1.5,-130\n3000,0.7,-50\n")
    return run_dir


def test_reward_refine_writes_new_versions_and_keeps_old_ones(server, tmp_path, capsys):
    run_dir = fake_run(tmp_path)
    v1 = (run_dir / "reward_code" / "v1.py").read_text()
    second_program = REACH_PROGRAM.replace("0.01", "0.001")
    third_program = REACH_PROGRAM.replace("0.01", "0.0001")

    server.script = [fenced(second_program)]
    code = main(["reward", "refine", str(run_dir), "It stops short of the goal.", *llm_args(server)])
    assert code == 0, capsys.readouterr().err
    v2_path = run_dir / "reward_code" / "v2.py"
    assert str(v2_path) in capsys.readouterr().out and v2_path.read_text().endswith(second_program)
    (text,) = server.user_texts(0)
    assert "It stops short of the goal." in text and "Move the gripper to the goal." in text
    assert "eval/success_rate: 0 at step 1000, 0.1 at step 2000, 0.3 at step 3000" in text  # the statistics
    assert "eval/return" in text and "train/episode_return" in text and "critic_loss" not in text
    assert "0.01 * np.square" in text  # the program being refined

    v2 = v2_path.read_text()
    server.script = [fenced(third_program)]
    assert main(["reward", "refine", str(run_dir), "Now it overshoots.", *llm_args(server)]) == 0
    assert (run_dir / "reward_code" / "v3.py").read_text().endswith(third_program)
    assert (run_dir / "reward_code" / "v1.py").read_text() == v1 and v2_path.read_text() == v2
    (text,) = server.user_texts(1)
    # Both rounds are in the prompt, oldest first: the paper's multi-round feedback.
    assert text.index("It stops short of the goal.") < text.index("Now it overshoots.")
    assert "0.001 * np.square" in text

    history = [json.loads(line) for line in (run_dir / "reward_code" / "history.jsonl").read_text().splitlines()]
    assert [(h["version"], h["parent"]) for h in history] == [(2, 1), (3, 2)]
    assert history[0]["feedback"] == "It stops short of the goal." and history[0]["model"] == "test-model"
    assert history[1]["instruction"] == "Move the gripper to the goal." and "eval/success_rate" in history[1]["statistics"]
    assert all(h["timestamp"] for h in history)


def test_reward_refine_starts_from_the_program_the_config_names(server, tmp_path, capsys):
    library_program = prompt.library_root() / "metaworld" / "reach-v3.py"
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    config = {"env": {"id": "metaworld/reach-v3", "options": {"reward_code": str(library_program)}}}
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))  # no reward_code/ copy, no statistics
    server.script = [fenced(REACH_PROGRAM)]
    assert main(["reward", "refine", str(run_dir), "Faster, please.", *llm_args(server)]) == 0, capsys.readouterr().err
    assert (run_dir / "reward_code" / "v1.py").read_text() == library_program.read_text()
    assert (run_dir / "reward_code" / "v2.py").read_text().endswith(REACH_PROGRAM)
    (text,) = server.user_texts(0)
    assert "I want it to fulfill the following task: Move the end-effector to the goal position." in text  # its docstring
    assert "No training statistics" in text


def test_reward_refine_without_a_program_says_what_is_missing(server, tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(yaml.safe_dump({"env": {"id": "metaworld/reach-v3"}}))
    assert main(["reward", "refine", str(run_dir), "feedback", *llm_args(server)]) == 2
    assert "reward_code/v1.py" in capsys.readouterr().err and not server.requests
