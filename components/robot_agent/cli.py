"""`wallwm-agent`: run the agent, or print its status / public key (argparse: no extra deps)."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import urllib.request
from pathlib import Path

from components.robot_agent.config import ConfigError, load_config


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="wallwm-agent", description="WALL-WM robot agent: pulls "
                                 "signed engines, installs them A/B, serves actions on loopback.")
    ap.add_argument("--config", type=Path, help="TOML file (default: $WALLWM_AGENT_CONFIG)")
    sub = ap.add_subparsers(dest="cmd")
    sub.add_parser("run", help="run the agent (default)")
    sub.add_parser("status", help="print the running agent's status (from its state folder)")
    sub.add_parser("pubkey", help="print this robot's public key (made on first use)")
    sub.add_parser("check-config", help="validate the configuration and exit")
    args = ap.parse_args(argv)
    try:
        cfg = load_config(args.config)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    cmd = args.cmd or "run"
    if cmd == "check-config":
        print(cfg.model_dump_json(indent=2))
        return 0
    if cmd == "pubkey":
        from wallwm.release.keys import load_or_create_device_key, public_key_json

        cfg.state_dir.mkdir(parents=True, exist_ok=True)
        print(public_key_json(load_or_create_device_key(cfg.state_dir / "robot.key").public_key))
        return 0
    if cmd == "status":
        port_file = cfg.state_dir / "agent.port"
        try:
            port = int(port_file.read_text())
            with urllib.request.urlopen(f"http://{cfg.serve_host}:{port}/status",
                                        timeout=5) as r:
                print(r.read().decode())
            return 0
        except (OSError, ValueError):
            status = cfg.state_dir / "status.json"
            if status.exists():
                print(status.read_text())
                return 3  # not running; last status shown
            print(f"error: no agent running and no {status}", file=sys.stderr)
            return 1
    from components.robot_agent.agent import Agent
    from components.robot_agent.logs import setup

    log = setup(cfg.robot_id, cfg.log_level)
    agent = Agent(cfg, log)
    signal.signal(signal.SIGTERM, lambda *_: agent.stop())
    signal.signal(signal.SIGINT, lambda *_: agent.stop())
    agent.run()
    print(json.dumps({"stopped": cfg.robot_id}), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
