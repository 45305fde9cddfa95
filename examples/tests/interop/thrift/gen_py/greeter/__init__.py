__all__ = ['ttypes', 'constants', 'Greeter']
