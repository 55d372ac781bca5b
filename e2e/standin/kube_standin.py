#!/usr/bin/env python3
"""kube-standin: an in-memory Kubernetes API server stand-in for ferry's end-to-end tests.

Usage:  /opt/ferry-venv/bin/python e2e/standin/kube_standin.py --port 0 \\
            --kubeconfig-out /tmp/kubeconfig --ready-file /tmp/standin.ready [--log]

Binds 127.0.0.1 unless --host names another address; exits on SIGTERM / SIGINT.
See README.md beside this file for what it implements and where it differs from a real API server.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from standin.server import main  # noqa: E402

if __name__ == "__main__":
    main()
