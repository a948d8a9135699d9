"""ml-collections config files; each defines get_config(arg) and is passed as --config=configs/FILE.py[:ARG]."""
