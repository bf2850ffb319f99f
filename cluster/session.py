"""The Ray instance a distributed run uses: a private local one, or a running cluster
joined with Ray's token authentication kept on.

The library never calls ``ray.init`` on its own initiative: :func:`start_local_ray` and
:class:`ray_session` do, when the user (or ``dlrun train --workers N``) asks for workers.
"""
from __future__ import annotations

import os
import tempfile

from dlrun.errors import ClusterError


# -- the Ray instance ------------------------------------------------------------------------
def start_local_ray(num_cpus: int | None = None) -> str:
    """Start a private local Ray instance (no dashboard) for this process; returns its temp
    folder. A fresh temp folder makes it immune to a stale ``ray_current_cluster`` file
    left by a head that died without ``ray stop``."""
    import ray

    from dlrun.ops.threads import available_cores

    temp = tempfile.mkdtemp(prefix="dlrun-ray-")
    ray.init(address="local", num_cpus=num_cpus or available_cores(),
             include_dashboard=False, _temp_dir=temp, log_to_driver=True,
             configure_logging=False)
    return temp

def _token_available() -> bool:
    """A token where Ray looks for one: ``RAY_AUTH_TOKEN``, else the file
    ``RAY_AUTH_TOKEN_PATH`` names, else ``~/.ray/auth_token``. (Only whether it exists;
    dlrun never reads it, Ray does.)"""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return True
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or os.path.expanduser("~/.ray/auth_token")
    return os.path.isfile(path)

def _enable_token_auth() -> None:
    """Token mode for this process, as Ray's own ``address='auto'`` path switches it on
    (the mode is cached by Ray's config, so setting the variable alone is not enough)."""
    try:
        from ray._private.authentication.authentication_token_setup import (
            maybe_enable_token_auth_if_token_available)
    except ImportError:              # a Ray without token authentication
        return
    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)

TOKEN_HELP = ("set RAY_AUTH_TOKEN to the cluster's token (or RAY_AUTH_TOKEN_PATH to a file "
              "holding it, or copy the head's ~/.ray/auth_token here), or run with "
              "--address auto on a node of the cluster; dlrun never turns Ray's "
              "authentication off")

def _probe(address: str, timeout_s: float = 5.0) -> str:
    """Open a GCS client on the cluster at ``address``, as ``ray.init`` does first, sending
    the token this process would send (if any): 'auth' if the cluster refuses it for want
    of the right token, 'unreachable' if nothing answers, else 'ok' (also when this Ray
    lacks these internals: then ``ray.init`` decides). ``ray.init`` itself retries a
    refused token for ~20 s and then only says it could not connect."""
    try:
        from ray._private.services import canonicalize_bootstrap_address
        from ray._raylet import InnerGcsClient
        from ray.exceptions import AuthenticationError, RpcError
    except ImportError:
        return "ok"
    try:
        gcs = canonicalize_bootstrap_address(address)
    except Exception:                    # noqa: BLE001 - ray.init reports a bad address
        return "ok"
    if gcs is None:
        return "ok"
    try:
        InnerGcsClient.standalone(gcs, None, int(timeout_s * 1000))
    except AuthenticationError:
        return "auth"
    except RpcError as e:
        return "unreachable" if "timed out" in str(e).lower() else "ok"
    except Exception:                    # noqa: BLE001 - anything else: ray.init decides
        return "ok"
    return "ok"

def connect_ray(address: str) -> None:
    """Join a running Ray cluster at ``address`` ('auto', 'HOST:PORT' or 'ray://...').

    Ray's token authentication stays on. With ``address='auto'`` Ray finds the cluster's
    token itself; with an explicit address it would not send it (and fail after ~20 s), so
    when a token is at hand (``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH`` or
    ``~/.ray/auth_token``) and ``RAY_AUTH_MODE`` is unset, token mode is switched on for
    this process, as ``auto`` would. A cluster that refuses the connection for want of
    the right token is reported at once (:class:`ClusterError`, saying how to pass it).
    """
    import ray

    if "RAY_AUTH_MODE" not in os.environ and _token_available():
        _enable_token_auth()
    unreachable = (f"cannot reach a Ray cluster at {address!r}{{}}; start one with `ray "
                   "start --head`, or leave out --address to use local workers")
    probe = "ok" if address.startswith("ray://") else _probe(address)
    if probe == "auth":
        mode = os.environ.get("RAY_AUTH_MODE", "token")
        found = (f"RAY_AUTH_MODE is {mode!r} here" if mode != "token"
                 else "the token found here was refused" if _token_available()
                 else "no token was found here")
        raise ClusterError(f"the Ray cluster at {address!r} requires token authentication "
                           f"and {found}: {TOKEN_HELP}")
    if probe == "unreachable":
        raise ClusterError(unreachable.format(" (no answer)"))
    try:
        ray.init(address=address, configure_logging=False)
    except ConnectionError as e:
        raise ClusterError(unreachable.format(f" ({e})")) from None
    except Exception as e:               # noqa: BLE001 - Ray raises many kinds here
        text = str(e)
        if "auth" in text.lower() or "token" in text.lower():
            raise ClusterError(f"the Ray cluster at {address!r} refused the connection: "
                               f"{text.splitlines()[0] if text else e!r}; {TOKEN_HELP}"
                               ) from None
        raise

class ray_session:
    """Ray for the length of a ``with`` block, as ``dlrun train --workers`` needs it: the
    instance this process already joined; else the cluster at ``address`` (or
    ``$RAY_ADDRESS``); else a private local one with ``num_cpus`` CPUs. Leaves (and, for a
    local one, stops) only what it started."""

    def __init__(self, address: str | None = None, num_cpus: int | None = None):
        self.address, self.num_cpus = address, num_cpus
        self.started, self.temp, self.kind = False, None, None

    def __enter__(self):
        import ray

        if ray.is_initialized():
            self.kind = "running"
            return self
        address = self.address or os.environ.get("RAY_ADDRESS") or None
        if address:
            connect_ray(address)
            self.kind = f"cluster at {address}"
        else:
            self.temp = start_local_ray(self.num_cpus)
            self.kind = f"local Ray instance ({self.num_cpus or 'all'} CPUs)"
        self.started = True
        return self

    def __exit__(self, *exc):
        import shutil

        import ray

        if self.started:
            ray.shutdown()
        if self.temp:
            shutil.rmtree(self.temp, ignore_errors=True)
        return False
