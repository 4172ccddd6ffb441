-- Who holds which partitions, as each `consume --join-group` member last heard from its group's
-- coordinator. The coordinator decides; this is a record for `streamlab check` (brokers such as
-- tansu do not report assignments in DescribeGroups). A member deletes its row when it leaves.
CREATE TABLE IF NOT EXISTS streamlab_members (
    consumer_group  TEXT    NOT NULL,
    topic           TEXT    NOT NULL,
    member_id       TEXT    NOT NULL,
    generation      INTEGER NOT NULL,
    partitions      TEXT    NOT NULL,  -- comma-separated, e.g. '0,1'; '' for none
    client          TEXT    NOT NULL,  -- host and process id
    assigned_at     TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    PRIMARY KEY (consumer_group, topic, member_id)
);
