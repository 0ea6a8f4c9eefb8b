"""Release format and security: from an export bundle to an engine a robot may run.

The whole workflow, module by module (no torch, Prefect or MLflow anywhere in here):

1. `bundle`: the export bundle `wallwm-bundle/1` (FORMAT.md): manifest model, path rules,
   `verify_bundle` (every file's size and sha256, no stray files, no symlinks, no `..`).
2. `engine`: the torch-free runner: onnxruntime sessions per graph, the Euler host loop,
   normalization, tokenization, and the health check on the bundle's reference sample.
3. `keys` + `tuf_repo` + `store`: the publisher's side of The Update Framework: one TUF
   repository per channel (root, targets, snapshot, timestamp; thresholds; expiry;
   consistent snapshots), keys split offline/online, `rotate_keys` through new roots.
   `compat` writes engine compatibility into each target's custom fields.
4. `client`: the robot's side: `tuf.ngclient.Updater(..., bootstrap=trusted_root)` for the
   metadata, then resumable, length-capped, hash-checked downloads of each bundle file.
5. `rollout` (pure) + `signing`: the director's staged rollouts (phases, soak, halt and
   revert, pins, floor) and DSSE-signed assignments and status reports, kept apart from the
   signed release index as in Uptane.

Services live one layer up: components/storage/release_store.py (S3), components/release
(publishing, the director, a simulated fleet), components/robot_agent (the agent).
"""
