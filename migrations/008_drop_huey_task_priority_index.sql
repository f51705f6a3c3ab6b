-- edgeworker sets no priorities: the queue is taken in id order, which needs no index of its
-- own. huey's priority index cost a page write at every enqueue and every dequeue.
DROP INDEX huey_task_priority_id;
