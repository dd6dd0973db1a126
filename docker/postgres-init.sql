-- One PostgreSQL server, two databases: Airflow's metadata and MLflow's backend store.
CREATE DATABASE mlflow;
