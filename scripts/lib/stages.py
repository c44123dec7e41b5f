"""The notification stages' configuration for the soak and the benchmarks, from its one source:
`conveyor notify example-config`. Callers put their own tables ([telemetry], [ops], [infra],
[extraction]) before it and their own [notify] keys after it (the output ends in [notify]);
a queue's settings are changed with CONVEYOR_QUEUES__<KEY>__<SETTING> in the daemon's
environment, since its tables are already written. Their tenants are many and made up on the
spot, so sources stay unbound (--allow-unbound: the test environment allows it)."""

import os
import subprocess


def stages_toml(conveyor, repo, prefix, *flags):
    env = dict(os.environ, CONVEYOR_ENV="test", CONVEYOR_CONFIG_DIR=os.path.join(repo, "config"))
    env.pop("CONVEYOR_CONFIG", None)
    return subprocess.run(
        [conveyor, "notify", "example-config", "--prefix", prefix, "--allow-unbound", *flags],
        env=env, check=True, capture_output=True, text=True, timeout=60,
    ).stdout
