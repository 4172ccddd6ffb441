-- Who holds which partitions, as each `consume --join-group` member last heard from its group's
-- coordinator. The coordinator decides; this is a record for `streamlab check` (brokers such as
-- tansu do not report assignments in DescribeGroups). A member deletes its row when it leaves.
CREATE TABLE IF NOT EXISTS public.streamlab_members (
    consumer_group  text        NOT NULL,
    topic           text        NOT NULL,
    member_id       text        NOT NULL,
    generation      integer     NOT NULL,
    partitions      text        NOT NULL,  -- comma-separated, e.g. '0,1'; '' for none
    client          text        NOT NULL,  -- host and process id
    assigned_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer_group, topic, member_id)
);
