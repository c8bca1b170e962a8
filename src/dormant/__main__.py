from dormant.cli_root import entry

if __name__ == "__main__":  # worker processes re-import this module under another name
    entry()
