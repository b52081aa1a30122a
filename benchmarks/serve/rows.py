"""One benchmark row: stamped with the time (UTC), printed, and appended to a JSON-lines file when one is given."""

from __future__ import annotations

import json
import time


def record(row: dict, json_out: str | None) -> dict:
    row["time"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    print(json.dumps(row), flush=True)
    if json_out:
        with open(json_out, "a") as f:
            f.write(json.dumps(row) + "\n")
    return row
