"""``ubcfs bench``: throughput of ubcfs mounts next to their baselines, with charts.

The command mounts what it needs in a temp dir, runs a set of jobs (fio where fio fits) on a
set of targets for a number of interleaved rounds, and writes a table, ``results.json``,
PNG charts and an ``index.html`` into ``--out``.  ``--compare A.json B.json`` sets two such
runs side by side.  The modules:

* ``config``: the command line, validated (every bad value a one-line ``UsageError``);
* ``stats``: medians, spreads, per-round ratios, the rotation of the target order;
* ``system``: child processes that die with the run, Ctrl-C deferred during mounts, the
  machine's description, the host's page cache;
* ``targets``: the mounts (ubcfs in its modes, the backing directory, a Linux tmpfs);
* ``sampler``: page states sampled over the control channel while a job runs;
* ``ctree``: the small C tree of the ``build`` job;
* ``jobs``: the jobs;
* ``run``: the rounds, the progress line, Ctrl-C;
* ``report``: the terminal table and ``results.json``;
* ``charts``: the PNGs and ``index.html`` (matplotlib, imported only there);
* ``compare``: ``--compare``.

Nothing here is imported by ``ubcfs.cli`` until the ``bench`` command runs.
"""
