import subprocess
import sys


def test_help_lists_commands_and_exit_codes(runner):
    code, out, _ = runner("--help")
    assert code == 0
    assert "predict" in out and "Exit codes" in out


def test_help_does_not_import_torch():
    code = (
        "import sys; from mfaf_cli.cli.main import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "assert 'torch' not in sys.modules, 'torch imported by --help'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


def test_unknown_command_is_usage_error(runner):
    code, _, err = runner("no-such-command")
    assert code == 2
    assert "No such command" in err
