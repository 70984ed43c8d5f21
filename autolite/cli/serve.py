"""``autolite serve``: an OpenAI-compatible HTTP server with dynamic batching (uvicorn)."""
from __future__ import annotations

import typer

from autolite.cli.common import MODEL_ARG, err_console, flag, non_negative, positive
from autolite.errors import AutoliteError


def serve(model: str = MODEL_ARG,
          host: str = typer.Option("127.0.0.1", help="Bind address (loopback by default)."),
          port: int = typer.Option(8000, min=0, max=65535, help="TCP port (0: any free port, printed)."),
          max_batch_size: int = typer.Option(32, min=1, help="Texts per forward; 1 = no batching."),
          max_wait_ms: float = typer.Option(5.0, callback=non_negative,
                                            help="How long the oldest text may wait for a fuller batch."),
          workers: int = typer.Option(1, min=1, help="Model workers (threads sharing the weights), cores split "
                                                     "between them."),
          threads: int = typer.Option(None, min=1, help="Intra-op threads per worker (default: its CPU count)."),
          pin: bool = flag(True, "--pin/--no-pin", help="Pin each worker to its CPUs."),
          api_key: str = typer.Option(None, envvar="AUTOLITE_API_KEY",
                                      help="Require 'Authorization: Bearer KEY' (or set AUTOLITE_API_KEY)."),
          max_tokens: int = typer.Option(None, min=1, help="Tokens per text (default: the model's context, <= 512)."),
          truncate: bool = flag(False, "--truncate/--no-truncate",
                                        help="Cut texts over --max-tokens instead of answering 413."),
          max_texts: int = typer.Option(256, min=1, help="Texts per request."),
          max_body_bytes: int = typer.Option(1024 * 1024, min=1, help="Request body limit in bytes."),
          max_queue: int = typer.Option(1024, min=1, help="Queued texts before answering 429."),
          max_new_tokens: int = typer.Option(256, min=1, help="Largest max_tokens a completion may ask for."),
          timeout: float = typer.Option(30.0, callback=positive,
                                        help="Seconds a request may wait for its answer (then 504)."),
          normalize: bool = flag(True, "--normalize/--no-normalize", help="L2-normalise embeddings."),
          device: str = typer.Option("auto", help="auto (the hardware probe's choice), cpu or cuda."),
          continuous_batching: bool = flag(False, "--continuous-batching",
                                           help="Decoders: /v1/completions on autolite's decode loop; requests "
                                                "join the running batch between steps, finished rows leave."),
          recipe: str = typer.Option("auto", help="Applied on load: auto (fast-dense, the fastest dense recipe "
                                                  "measured on this machine and cached, for an uncompressed encoder), "
                                                  "none, or a preset name or recipe file."),
          ray: bool = flag(False, "--ray", help="Serve as a Ray Serve deployment (needs autolite\\[ray])."),
          replicas: int = typer.Option(1, min=1, help="With --ray: model replicas, each with its own batcher."),
          cpus_per_replica: float = typer.Option(1.0, callback=positive,
                                                 help="With --ray: CPUs Ray reserves per replica."),
          ray_address: str = typer.Option(None, help="With --ray: 'auto' or HOST:PORT joins a running Ray cluster "
                                                     "(default: start a local one).")) -> None:
    """Serve MODEL over HTTP: /v1/embeddings, /v1/classify, /v1/completions, /health, /metrics."""
    # `server` is called through its module: tests replace load_engine / run_server
    from autolite.serve import server  # lazy: FastAPI + uvicorn (~0.4 s) that no other verb needs at start-up
    from autolite.serve.app import ServeConfig  # lazy: as above
    from autolite.serve.scaleout import RayOptions, require_ray, serve_with_ray  # lazy: as above

    config = ServeConfig(max_batch_size=max_batch_size, max_wait_ms=max_wait_ms, max_queue=max_queue,
                         timeout_s=timeout, workers=workers, threads=threads, pin=pin, max_body_bytes=max_body_bytes,
                         max_texts=max_texts, max_tokens=max_tokens, max_new_tokens=max_new_tokens,
                         truncate=truncate, normalize=normalize, api_key=api_key, recipe=recipe,
                         continuous_batching=continuous_batching)
    server.check_host(host, api_key)
    if ray:
        if port == 0:
            raise AutoliteError("--ray needs a fixed --port (Ray Serve's HTTP proxy binds it), not 0")
        require_ray()
        options = RayOptions(replicas=replicas, cpus_per_replica=cpus_per_replica, address=ray_address)
        err_console.print(f"serving {model} with {replicas} Ray replica(s) on http://{host}:{port} "
                          f"(batch <= {max_batch_size} per replica); SIGTERM or Ctrl-C drains and exits",
                          highlight=False)
        serve_with_ray(model, config, host, port, device, options)
        return
    sock = server.bind_socket(host, port)  # a busy port fails here, before the model loads
    with sock:
        engine = server.load_engine(model, config, device)
        err_console.print(f"serving {engine.name} ({', '.join(sorted(engine.tasks))}; {engine.backend}) on "
                          f"http://{host}:{sock.getsockname()[1]} (batch <= {max_batch_size}, wait <= "
                          f"{max_wait_ms:g} ms); SIGTERM or Ctrl-C drains and exits", highlight=False)
        server.run_server(engine, config, host, sock=sock)


def register(app: typer.Typer) -> None:
    app.command(epilog="Example: autolite serve minilm-int8/ --port 8000 --max-batch-size 32 --max-wait-ms 5")(serve)
