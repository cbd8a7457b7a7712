"""The `etcdsync` command line (click): `main` holds the group and the entry point; each module
registers its commands on it when imported."""
