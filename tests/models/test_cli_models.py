import subprocess
import sys

from maskcd.cli.models import main


def test_maskcd_models_prints_registry_with_parameter_counts(capsys):
    assert main(["maskcd-tiny", "maskcd-swin-b"]) == 0
    out = capsys.readouterr().out
    assert "maskcd-tiny" in out and "1.48 M" in out
    assert "maskcd-swin-b" in out and "107.41 M" in out


def test_maskcd_models_unknown_name_is_one_line_error():
    proc = subprocess.run([sys.executable, "-m", "maskcd.cli.models", "nope"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "unknown model 'nope'" in proc.stderr
