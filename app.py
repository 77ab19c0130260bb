"""Hugging Face Spaces entry point: `python app.py [MODEL_DIR]` serves the VLAP web demo (vlap.app) on
http://127.0.0.1:7860. MODEL_DIR defaults to $VLAP_MODEL, else the model `make demo` exports."""

import sys

from vlap.app import main

if __name__ == "__main__":
    sys.exit(main())
