-- The Prefect server keeps its own database beside engram's (docker-compose.yml).
CREATE DATABASE prefect OWNER engram;
