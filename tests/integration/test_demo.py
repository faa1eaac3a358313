"""The README's first command: the demo, on the embedded broker."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

DEMO = Path(__file__).resolve().parents[2] / "examples" / "demo.py"


def test_the_demo_processes_every_event_on_the_embedded_broker(tmp_path):
    env = {key: value for key, value in os.environ.items() if not key.startswith("EVENTLIB_")}

    result = subprocess.run(
        [sys.executable, str(DEMO), "--events", "120"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    report = result.stdout
    assert f"broker eventlib+sqlite:///{tmp_path.resolve()}/eventlib-broker.sqlite" in report
    assert re.search(r"events logged\s+120 ", report)
    assert re.search(r"events processed\s+120\n", report)
    assert re.search(r"events lost\s+0\n", report)
    # 120 events: 40 orders (two handlers, one failing) and 80 page views,
    # each also audited.
    assert re.search(r"ok\s+save_order\s+40\n", report)
    assert re.search(r"ok\s+count_view\s+80\n", report)
    assert re.search(r"ok\s+audit\s+120\n", report)
    assert re.search(r"failed\s+shop\.events\.OrderPlaced\.email_receipt\s+40\n", report)
