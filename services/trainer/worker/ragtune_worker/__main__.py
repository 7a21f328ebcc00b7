"""`python -m ragtune_worker`: run one training job over the JSON-lines protocol (see protocol.py)."""

import sys

from ragtune_worker.protocol import main

if __name__ == "__main__":
    sys.exit(main())
