from dormant.cli import entry

entry()
