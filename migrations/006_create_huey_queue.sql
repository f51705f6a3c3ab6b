-- huey's SqlStorage tables (huey.contrib.sql_huey), prefixed: the queue lives in this file so that
-- a task row and its message commit in one transaction.
CREATE TABLE huey_kv (
    queue VARCHAR(255) NOT NULL,
    key VARCHAR(255) NOT NULL,
    value BLOB NOT NULL,
    PRIMARY KEY (queue, key)
);

CREATE TABLE huey_schedule (
    id INTEGER NOT NULL PRIMARY KEY,
    queue VARCHAR(255) NOT NULL,
    data BLOB NOT NULL,
    timestamp INTEGER NOT NULL
);

CREATE INDEX huey_schedule_queue_timestamp ON huey_schedule (queue, timestamp);

CREATE TABLE huey_task (
    id INTEGER NOT NULL PRIMARY KEY,
    queue VARCHAR(255) NOT NULL,
    data BLOB NOT NULL,
    priority REAL NOT NULL
);

CREATE INDEX huey_task_priority_id ON huey_task (priority DESC, id);

CREATE TABLE huey_counter (
    queue VARCHAR(255) NOT NULL,
    key VARCHAR(255) NOT NULL,
    value INTEGER NOT NULL,
    PRIMARY KEY (queue, key)
);
