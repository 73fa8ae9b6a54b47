"""``launch`` that runs N CPU worker processes over gloo when CUDA is absent and Detectron2's own ``launch``
cannot (v0.6), Detectron2's own otherwise (``hqod.compat`` measure 3); with several workers, a worker's ``HQODError``
reaches the caller as that one-line error rather than as the worker's traceback."""
import logging
from datetime import timedelta
from functools import partial

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from detectron2.engine import launch as d2_launch
from detectron2.utils import comm
from torch.multiprocessing.spawn import ProcessException

from .. import compat
from ..errors import HQODError

DEFAULT_TIMEOUT = timedelta(minutes=30)


def launch(main_func, num_gpus_per_machine, num_machines=1, machine_rank=0, dist_url=None, args=(),
           timeout=DEFAULT_TIMEOUT):
    """Same signature as ``detectron2.engine.launch``; without CUDA, ``num_gpus_per_machine`` counts CPU workers."""
    if num_machines * num_gpus_per_machine == 1:
        return d2_launch(main_func, 1, num_machines=1, machine_rank=machine_rank, dist_url=dist_url, args=args,
                         timeout=timeout)
    errors = mp.get_context("spawn").SimpleQueue()
    main_func = partial(_reporting_errors, main_func, errors)
    try:
        if torch.cuda.is_available() or compat.LAUNCH_RUNS_CPU_WORKERS:
            return d2_launch(main_func, num_gpus_per_machine, num_machines=num_machines, machine_rank=machine_rank,
                             dist_url=dist_url, args=args, timeout=timeout)
        if dist_url in (None, "auto"):
            if num_machines != 1:
                raise ValueError("--dist-url auto works on one machine only; pass tcp://HOST:PORT")
            dist_url = f"tcp://127.0.0.1:{_free_port()}"
        mp.spawn(_cpu_worker, nprocs=num_gpus_per_machine, daemon=False,
                 args=(main_func, num_machines, num_gpus_per_machine, machine_rank, dist_url, args, timeout))
    except ProcessException:
        if not errors.empty():
            raise HQODError(errors.get()) from None
        raise


def _reporting_errors(main_func, errors, *args):
    """Run ``main_func`` in a worker; an HQODError's message goes to the parent before the worker fails. A worker
    that finished closes the process group with the others, so that none exits while gloo still talks to it (such
    an exit can abort the process: "terminate called without an active exception")."""
    try:
        result = main_func(*args)
    except HQODError as e:
        errors.put(str(e))
        raise
    if dist.is_initialized():
        comm.synchronize()
        dist.destroy_process_group()
    return result


def _free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _cpu_worker(local_rank, main_func, num_machines, workers_per_machine, machine_rank, dist_url, args, timeout):
    world_size = num_machines * workers_per_machine
    rank = machine_rank * workers_per_machine + local_rank
    try:
        dist.init_process_group("gloo", init_method=dist_url, world_size=world_size, rank=rank, timeout=timeout)
    except Exception:
        logging.getLogger(__name__).error("Process group URL: %s", dist_url)
        raise
    if hasattr(comm, "create_local_process_group"):  # Detectron2 after v0.6 but before its gloo fallback
        comm.create_local_process_group(workers_per_machine)
    else:  # Detectron2 v0.6 keeps the group in a module global
        for i in range(num_machines):
            group = dist.new_group(list(range(i * workers_per_machine, (i + 1) * workers_per_machine)))
            if i == machine_rank:
                comm._LOCAL_PROCESS_GROUP = group
    comm.synchronize()
    main_func(*args)
