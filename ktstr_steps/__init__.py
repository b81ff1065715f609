"""ktstr-ci: ktstr's kernel build pipeline as a library, a command and Buildbot steps.

Everything directly in this package is plain Python (no Buildbot import) so the
pipeline runs from the command line and on workers; the Buildbot step classes
live in ``ktstr_steps.buildsteps``.
"""
