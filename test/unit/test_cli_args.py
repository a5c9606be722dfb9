"""The exit-code contract every CLI shares through ``cli_args.run_cli``: one-line reason, 2 / 130, bugs not hidden."""

from __future__ import annotations

import pytest

from d3_perception.cli_args import run_cli


def _raise(exc: BaseException):
    def body() -> int:
        raise exc

    return body


def test_expected_error_is_one_line_with_exit_code_2(capsys):
    code = run_cli("d3-x", _raise(ValueError("bad value\n  in file\tdata.yaml")), (ValueError,))
    err = capsys.readouterr().err
    assert code == 2
    assert err == "d3-x: error: bad value in file data.yaml\n"


def test_error_code_is_configurable_and_body_code_passes_through(capsys):
    assert run_cli("d3-x", _raise(FileNotFoundError("no such file: a")), (OSError,), error_code=1) == 1
    assert run_cli("d3-x", lambda: 0, (ValueError,)) == 0
    assert run_cli("d3-x", lambda: 3, (ValueError,)) == 3


def test_ctrl_c_exits_130_with_the_given_message(capsys):
    assert run_cli("d3-x", _raise(KeyboardInterrupt()), (ValueError,), interrupted="interrupted; kept a.bag") == 130
    assert capsys.readouterr().err == "d3-x: interrupted; kept a.bag\n"


def test_unexpected_errors_keep_their_traceback():
    with pytest.raises(ZeroDivisionError):
        run_cli("d3-x", _raise(ZeroDivisionError("bug")), (ValueError,))
