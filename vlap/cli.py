"""`vlap` console script."""

import argparse


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="vlap", description="VLAP: bridged vision-language models (CLI)")
    parser.parse_args(argv)
    parser.print_help()
    return 0
