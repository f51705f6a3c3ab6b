-- How many processes of interrupted runs each start-up recovery ended (left by a killed worker).
ALTER TABLE recoveries ADD COLUMN ended INTEGER NOT NULL DEFAULT 0;
