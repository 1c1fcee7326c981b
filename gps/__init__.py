"""Positions in: NMEA parsing, file replay and the receivers' transports."""
