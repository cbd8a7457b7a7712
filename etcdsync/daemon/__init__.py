"""`etcdsync run`: the daemon (`daemon.Daemon` is the composition root) and its parts."""
