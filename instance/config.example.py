# Copy to instance/config.py: upper-case names override config.py's classes.
# LOG_LEVEL = "DEBUG"
# CORS_ORIGINS = "http://localhost:5173"
# MONGO_URI = "mongodb://localhost:27017/?replicaSet=rs0"
