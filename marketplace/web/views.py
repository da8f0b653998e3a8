from django.shortcuts import render

from marketplace import selectors


def markets(request):
    instruments = selectors.instrument_list().filter(status="open")
    return render(request, "web/markets.html", {"instruments": instruments})


def instrument(request, symbol: str):
    from marketplace import services

    inst = services.instrument_get(symbol=symbol)
    book = selectors.instrument_book_get(instrument=inst)
    return render(request, "web/instrument.html", {"instrument": inst, "book": book})
