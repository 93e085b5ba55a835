"""``python -m src_models.cli ...``: the annotation widget starts
``python -m src_models.cli retrain PROJECT --config - --jsonl`` this way."""

import sys

from src_models.cli import main

if __name__ == "__main__":
    sys.exit(main())
