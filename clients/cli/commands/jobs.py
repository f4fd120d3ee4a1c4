"""`gmbsync jobs list|show|wait`, `gmbsync cancel` and `gmbsync retry`."""

from __future__ import annotations

import argparse

from clients import errors
from clients.cli.context import AddCommon, Context, UsageError
from clients.cli.exitcodes import ExitCode
from clients.cli.output import message_dict
from clients.cli.render import job_detail, jobs_table
from clients.queue import FINISHED_STATUSES, Job, JobStatus

STATUS_NAMES = ("pending", "processing", "succeeded", "failed", "cancelled")
# ListJobs' largest page.
MAX_PAGE = 500


def register(groups: argparse._SubParsersAction, add_common: AddCommon) -> None:
    jobs = groups.add_parser(
        "jobs", help="list jobs, show one with its attempts, wait for one", description=__doc__
    )
    add_common(jobs)
    actions = jobs.add_subparsers(dest="jobs_command", metavar="ACTION")
    jobs.set_defaults(run=list_jobs, status=None, account=None, user=None, limit=50)

    listing = actions.add_parser("list", help="jobs newest first (the default action)")
    add_common(listing)
    listing.add_argument("--status", choices=STATUS_NAMES, help="only jobs in this status")
    listing.add_argument("--account", metavar="UUID", help="only this account's jobs")
    listing.add_argument("--user", metavar="UUID", help="only this user's jobs (admins)")
    listing.add_argument(
        "--limit", type=int, default=50, help="jobs to show at most, newest first (default 50)"
    )
    listing.set_defaults(run=list_jobs)

    show = actions.add_parser("show", help="one job with its attempt history and result")
    add_common(show)
    show.add_argument("job_id", metavar="JOB_ID")
    show.set_defaults(run=show_job)

    wait = actions.add_parser(
        "wait",
        help="wait until a job finishes (exit 0 succeeded, 5 failed or cancelled, 3 timeout)",
    )
    add_common(wait)
    wait.add_argument("job_id", metavar="JOB_ID")
    wait.add_argument(
        "--wait-timeout",
        type=float,
        default=600.0,
        metavar="SECONDS",
        help="give up after this long (default 600)",
    )
    wait.set_defaults(run=wait_job)

    cancel = groups.add_parser(
        "cancel", help="cancel pending jobs", description="Cancel pending jobs."
    )
    add_common(cancel)
    cancel.add_argument("job_ids", metavar="JOB_ID", nargs="+")
    cancel.set_defaults(run=lambda c: change_jobs(c, "cancel"))

    retry = groups.add_parser(
        "retry",
        help="put failed or cancelled jobs back to pending",
        description="Put failed or cancelled jobs back to pending, their attempts reset.",
    )
    add_common(retry)
    retry.add_argument("job_ids", metavar="JOB_ID", nargs="+")
    retry.set_defaults(run=lambda c: change_jobs(c, "retry"))


def list_jobs(context: Context) -> int:
    args = context.args
    if args.limit < 1:
        raise UsageError(f"--limit must be at least 1, got {args.limit}")
    status = (
        JobStatus.Value(f"JOB_STATUS_{args.status.upper()}")
        if args.status
        else JobStatus.Value("JOB_STATUS_UNSPECIFIED")
    )
    queue = context.queue()
    jobs: list[Job] = []
    token = ""
    while len(jobs) < args.limit:
        page = queue.list_jobs(
            status=status,
            account_id=args.account or "",
            user_id=args.user or "",
            page_size=min(MAX_PAGE, args.limit - len(jobs)),
            page_token=token,
        )
        jobs.extend(page.jobs)
        token = page.next_page_token
        if not token:
            break
    context.out.emit(
        {"jobs": [message_dict(j) for j in jobs], "more": bool(token)},
        lambda: render_list(context, jobs, more=bool(token)),
    )
    return ExitCode.OK


def render_list(context: Context, jobs: list[Job], *, more: bool) -> None:
    jobs_table(context.out, jobs)
    if more:
        context.out.note(f"showing the newest {len(jobs)}; --limit shows more")


def show_job(context: Context) -> int:
    job = context.queue().get_job(context.args.job_id)
    context.out.emit(message_dict(job), lambda: job_detail(context.out, job))
    return ExitCode.OK


def finished_exit_code(job: Job) -> ExitCode:
    return (
        ExitCode.OK
        if job.status == JobStatus.Value("JOB_STATUS_SUCCEEDED")
        else ExitCode.JOB_UNSUCCESSFUL
    )


def wait_job(context: Context) -> int:
    if context.args.wait_timeout <= 0:
        raise UsageError(f"--wait-timeout must be positive, got {context.args.wait_timeout:g}")
    job = context.queue().wait_for_job(context.args.job_id, timeout=context.args.wait_timeout)
    assert job.status in FINISHED_STATUSES
    context.out.emit(message_dict(job), lambda: job_detail(context.out, job))
    return finished_exit_code(job)


def change_jobs(context: Context, action: str) -> int:
    """Cancels or retries each job; one refusal does not stop the others (exit 1 if any)."""
    queue = context.queue()
    call = queue.cancel_job if action == "cancel" else queue.retry_job
    changed: list[Job] = []
    refused: list[dict[str, str]] = []
    worst = ExitCode.OK
    for job_id in context.args.job_ids:
        try:
            changed.append(call(job_id))
        except (errors.InvalidArgument, errors.NotFound, errors.FailedPrecondition) as exc:
            refused.append({"job_id": job_id, "code": exc.code.name, "message": exc.message})
            context.out.error(f"{job_id}: {exc.message}")
            worst = ExitCode.REFUSED
    context.out.emit(
        {"jobs": [message_dict(j) for j in changed], "refused": refused},
        lambda: jobs_table(context.out, changed) if changed else None,
    )
    return worst
