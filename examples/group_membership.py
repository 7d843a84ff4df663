"""Groups and members: who is out there, and what each says it can do.

    python examples/group_membership.py [URL]

Two coordinators (as two processes would be) join one group with capabilities, read the
members, change a capability, leave. Without a URL it uses file:// in a temporary directory.
"""


from tooz import coordination
from example_url import example_url

GROUP = b"image-workers"


def main(url):
    alpha = coordination.get_coordinator(url, b"worker-alpha")
    beta = coordination.get_coordinator(url, b"worker-beta")
    alpha.start(start_heart=True)
    beta.start(start_heart=True)

    # Group calls return a result at once; .get() waits for it (and raises its error).
    alpha.create_group(GROUP).get()
    try:
        beta.create_group(GROUP).get()
    except coordination.GroupAlreadyExist:
        print("beta: the group exists already")
    alpha.join_group(GROUP, capabilities={"cores": 8}).get()
    # join_group_create creates the group first when it is missing.
    beta.join_group_create(GROUP, capabilities={"cores": 2})

    print("groups:", alpha.get_groups().get())
    print("members:", sorted(alpha.get_members(GROUP).get()))
    for member, capabilities in sorted(alpha.get_members_with_capabilities(GROUP).get().items()):
        print("  %s: %s" % (member.decode(), capabilities))

    beta.update_capabilities(GROUP, {"cores": 4}).get()
    print("beta's capabilities now:", alpha.get_member_capabilities(GROUP, b"worker-beta").get())

    beta.leave_group(GROUP).get()
    print("members after beta left:", sorted(alpha.get_members(GROUP).get()))

    alpha.leave_group(GROUP).get()
    alpha.delete_group(GROUP).get()  # only an empty group can be deleted
    print("groups after delete:", alpha.get_groups().get())
    alpha.stop()
    beta.stop()


if __name__ == "__main__":
    with example_url() as url:
        main(url)
