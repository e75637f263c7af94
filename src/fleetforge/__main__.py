"""`python -m fleetforge`: the command line."""

from fleetforge.adapters.cli.main import main

if __name__ == "__main__":
    main()
