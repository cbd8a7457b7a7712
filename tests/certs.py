"""Throwaway certificate authorities for the TLS tests, made with the `openssl` command at test time.

`make_ca(dir, name)` -> CA; `ca.issue(name, server=True/False)` -> (cert, key) paths. Server
certificates carry the SANs 127.0.0.1 and localhost (or `sans=`); client certificates are for clientAuth.
EC P-256 keys, valid for two days: nothing here is meant to outlive the test run.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path


def openssl() -> str:
    path = shutil.which("openssl")
    if path is None:
        raise FileNotFoundError("openssl: not found (apt-get install openssl)")
    return path


def _run(*args: str, cwd: Path) -> None:
    p = subprocess.run([openssl(), *args], cwd=cwd, capture_output=True, timeout=30)
    if p.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)}: {p.stderr.decode(errors='replace')}")


@dataclass(frozen=True)
class CA:
    dir: Path
    name: str

    @property
    def cert(self) -> Path:
        return self.dir / f"{self.name}.pem"

    @property
    def key(self) -> Path:
        return self.dir / f"{self.name}.key"

    def issue(self, name: str, *, server: bool, cn: str | None = None,
              sans: str = "IP:127.0.0.1,DNS:localhost") -> tuple[Path, Path]:
        """A certificate signed by this CA: (cert.pem, key.pem); `sans` for a server certificate."""
        key, csr, cert, ext = (self.dir / f"{name}.key", self.dir / f"{name}.csr", self.dir / f"{name}.pem",
                               self.dir / f"{name}.ext")
        _run("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={cn or name}", cwd=self.dir)
        lines = ["basicConstraints=critical,CA:FALSE", "keyUsage=critical,digitalSignature,keyEncipherment"]
        if server:
            lines += [f"subjectAltName={sans}", "extendedKeyUsage=serverAuth,clientAuth"]
        else:
            lines += ["extendedKeyUsage=clientAuth"]
        ext.write_text("\n".join(lines) + "\n")
        _run("x509", "-req", "-in", str(csr), "-CA", str(self.cert), "-CAkey", str(self.key), "-set_serial",
             str(abs(hash((self.name, name))) % (2 ** 62)), "-days", "2", "-sha256", "-extfile", str(ext),
             "-out", str(cert), cwd=self.dir)
        return cert, key


def make_ca(directory: Path, name: str = "ca") -> CA:
    directory.mkdir(parents=True, exist_ok=True)
    ca = CA(directory, name)
    _run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(ca.key), "-out", str(ca.cert), "-days", "2", "-sha256", "-subj", f"/CN=etcdsync test {name}",
         "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
         cwd=directory)
    return ca
