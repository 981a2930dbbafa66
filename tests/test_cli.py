"""The `embodied` command: listing, rollouts, videos and its error messages."""

import imageio.v2 as imageio
import pytest

from embodied.cli import main


def test_envs_lists_ids_with_spaces(capsys):
    assert main(["envs", "--suite", "mujoco"]) == 0
    out = capsys.readouterr().out
    assert "mujoco/HalfCheetah-v5" in out and "Box(17,) float64" in out and "Box(6,) float32" in out


def test_rollout_scripted_prints_success_and_writes_video(tmp_path, capsys):
    video = tmp_path / "reach.gif"
    code = main([
        "rollout", "metaworld/reach-v3", "--policy", "scripted", "--episodes", "1", "--seed", "3",
        "--video", str(video), "--video-every", "50", "--video-size", "32",
    ])  # fmt: skip
    assert code == 0
    out = capsys.readouterr().out
    assert "success rate 1.00" in out
    frames = imageio.mimread(video)
    assert len(frames) == 11 and frames[0].shape[:2] == (32, 32)


def test_rollout_random_on_locomotion(capsys):
    assert main(["rollout", "mujoco/Hopper-v5", "--episodes", "2", "--json"]) == 0
    out = capsys.readouterr().out
    assert '"episodes": 2' in out and "success" not in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["rollout", "metaworld/psh-v3"], "Closest valid ids: metaworld/push-v3"),
        (["rollout", "metaworld/push-v3", "-o", "obss=pixels"], "Did you mean 'obs'"),
        (["rollout", "metaworld/push-v3", "-o", "image_size=-3", "-o", "obs=pixels"], "image_size"),
        (["rollout", "mujoco/Hopper-v5", "--policy", "scripted"], "no scripted policy for mujoco"),
        (["rollout", "mujoco/Hopper-v5", "--episodes", "0"], "--episodes"),
        (["rollout", "mujoco/Hopper-v5", "--video", "out.avi"], "must end in"),
        (["envs", "--suite", "atari"], "unknown suite"),
    ],
)
def test_cli_errors_exit_2_with_a_reason(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_bad_option_syntax_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["rollout", "mujoco/Hopper-v5", "-o", "obs"])
    assert exit_info.value.code == 2
    assert "KEY=VALUE" in capsys.readouterr().err
