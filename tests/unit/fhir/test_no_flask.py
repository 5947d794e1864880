"""Unit: `fhir/` knows FHIR but not Flask: importing it loads no web framework."""

from __future__ import annotations

import subprocess
import sys


def test_importing_the_fhir_package_does_not_load_flask():
    # A fresh interpreter: this test process has Flask loaded already.
    code = "import smartapp.fhir, sys; assert 'flask' not in sys.modules, 'flask loaded'"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
