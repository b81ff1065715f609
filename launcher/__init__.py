"""The ``make run`` launcher and the ``ktstr-ci`` command: the one package that
imports master, workers, settings and the pipeline alike.

* :mod:`launcher.service`: the whole service of one host (secrets, master
  directory, bare repositories and hooks, worker directories, supervisord,
  readiness), used by ``make run`` and by the test harness;
* :mod:`launcher.actions`: ``python -m launcher start|stop|status``;
* :mod:`launcher.report`: the ``make run`` banner and ``make status``;
* :mod:`launcher.procs`, :mod:`launcher.tacs`: pid files and the generated
  ``buildbot.tac`` files;
* :mod:`launcher.cli`: the ``ktstr-ci`` entry point, assembling the
  subcommands of the pipeline, the records and the workers.
"""
