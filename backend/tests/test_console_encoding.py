"""The `micd` command and the benchmarks print through an ASCII console without failing (a bare container, or
`LC_ALL=C` with UTF-8 mode off), and the Python API reads a child's output as UTF-8 whatever the locale."""

import os
import subprocess
import sys

ASCII_LOCALE = dict(os.environ, LC_ALL="C", LANG="C", PYTHONUTF8="0", PYTHONIOENCODING="")


def test_an_ascii_console_gets_escapes_not_a_crash():
    # the program text itself stays ASCII: an ASCII locale cannot pass other characters on a command line
    code = ("from micd.cli import tolerant_console; tolerant_console(); import sys; "
            "print('Dice \\u00b1 0.01 \\u2013 \\u0394'); print('warn \\u2265 2', file=sys.stderr)")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, env=ASCII_LOCALE, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout.decode("ascii").strip() == "Dice \\xb1 0.01 \\u2013 \\u0394"
    assert "\\u2265" in p.stderr.decode("ascii")


def test_without_it_the_same_console_fails():
    """Guards the test above: the locale it uses really is ASCII here."""
    p = subprocess.run([sys.executable, "-c", "print('\\u00b1')"], capture_output=True, env=ASCII_LOCALE, timeout=60)
    assert p.returncode != 0 and b"UnicodeEncodeError" in p.stderr
